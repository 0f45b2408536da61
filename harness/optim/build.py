"""Parameter groups and the optimizer of one trial: Muon for hidden matrices, AdamW for the rest.

Which parameter goes where is decided by the module structure of
:class:`harness.model.transformer.Transformer`, never by a model's name:

- **hidden** (Muon in a ``muon`` run): every parameter with ``ndim >= 2`` inside ``model.blocks``
  (attention projections, dense SwiGLU, routed expert stacks ``[E, n, m]``, shared experts),
  except the router;
- **router**: the parameters of a block module's ``gate`` child when that module also has
  ``experts`` (the MoE router ``E x D``). AdamW, as in KellerJordan/Muon, Moonlight
  (arXiv 2502.16982) and the Kimi K2 report (arXiv 2507.20534): Muon is for hidden matrices only.
  The router is its own group, ``router``, with ``optim.router_lr`` and
  ``optim.router_weight_decay`` (null: the AdamW lr and ``weight_decay``): at harness scale the
  router needs a smaller lr than the embeddings (docs/design.md, routing calibration);
- everything else: the embedding, the LM head (deduplicated when tied to the embedding), norm
  gains, biases.

AdamW weight decay follows nanoGPT: matrices (embedding, LM head, and the hidden matrices in an
``adamw`` run) decay with ``weight_decay``; vectors (norm gains, biases) do not.

Every param group carries ``name``, ``kind`` (``"muon"`` or ``"adamw"``), ``base_lr`` (the peak lr:
``optim.lr`` for Muon, ``optim.adamw_lr or optim.lr`` for AdamW in a Muon run, ``optim.lr`` in an
AdamW run, ``optim.router_lr`` or that AdamW lr for the router) and ``param_names``. The trainer
sets ``group["lr"] = group["base_lr"] * schedule``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from harness.config import OptimConfig
from harness.optim.muon import Muon

NamedParams = list[tuple[str, nn.Parameter]]


def split_params(model: nn.Module) -> dict[str, NamedParams]:
    """Split ``model``'s trainable parameters (tied ones once) into hidden / router / matrix /
    vector sets.

    Returns ``{"hidden": ..., "router": ..., "matrix": ..., "vector": ...}``: ``hidden`` =
    ``ndim >= 2`` inside ``model.blocks`` minus routers; ``router`` = the MoE routers' weights;
    ``matrix`` = the other ``ndim >= 2`` parameters (embedding, LM head); ``vector`` =
    ``ndim < 2`` (norms, biases). Raises ValueError when ``model`` has no ``blocks``.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no .blocks module: cannot tell hidden matrices"
        )
    router_ids = {
        id(p)
        for module in blocks.modules()
        if isinstance(getattr(module, "gate", None), nn.Module) and hasattr(module, "experts")
        for p in module.gate.parameters()
    }
    block_ids = {id(p) for p in blocks.parameters()}
    out: dict[str, NamedParams] = {"hidden": [], "router": [], "matrix": [], "vector": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            out["vector"].append((name, p))
        elif id(p) in router_ids:
            out["router"].append((name, p))
        elif id(p) in block_ids:
            out["hidden"].append((name, p))
        else:
            out["matrix"].append((name, p))
    return out


class _ChainedState(Mapping[Tensor, Any]):
    """Read-only view of several optimizers' ``state`` (never inserts, unlike a defaultdict)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self._optimizers = optimizers

    def __getitem__(self, key: Tensor) -> Any:
        for opt in self._optimizers:
            if key in opt.state:
                return opt.state[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[Tensor]:
        for opt in self._optimizers:
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._optimizers)


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, driven as one (e.g. Muon + AdamW).

    ``param_groups`` is the list of the children's group dicts (the same objects, so setting
    ``group["lr"]`` reaches the child); ``step()`` steps each child in order; ``state_dict()`` is
    ``{name: child.state_dict()}`` and ``load_state_dict`` restores every child, so a resumed run
    continues bit-identically. ``state`` is a read-only view of the children's state.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.optimizers = dict(optimizers)
        super().__init__([g for opt in self.optimizers.values() for g in opt.param_groups], {})
        self.state = _ChainedState(list(self.optimizers.values()))  # type: ignore[assignment]

    def _muon(self) -> Muon | None:
        return next((o for o in self.optimizers.values() if isinstance(o, Muon)), None)

    @property
    def last_update_rms(self) -> float | None:
        """The Muon child's :attr:`Muon.last_update_rms` (None without Muon or before a step)."""
        muon = self._muon()
        return None if muon is None else muon.last_update_rms

    @property
    def last_step_rms(self) -> float | None:
        """The Muon child's :attr:`Muon.last_step_rms` (None without Muon or before a step)."""
        muon = self._muon()
        return None if muon is None else muon.last_step_rms

    def _sync_groups(self) -> None:
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Step every child; a closure is evaluated once, before the children step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != set(self.optimizers):
            raise ValueError(
                f"state dict has {sorted(state_dict)}; expected {sorted(self.optimizers)}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
        self._sync_groups()


def muon_of(optimizer: torch.optim.Optimizer) -> Muon | None:
    """The Muon of ``optimizer`` (itself, or a :class:`CombinedOptimizer`'s child), or None."""
    if isinstance(optimizer, Muon):
        return optimizer
    return optimizer._muon() if isinstance(optimizer, CombinedOptimizer) else None


def _adamw(groups: list[dict[str, Any]], optim_config: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=optim_config.betas, eps=optim_config.eps)


def build_optimizer(model: nn.Module, optim_config: OptimConfig) -> torch.optim.Optimizer:
    """The trial's optimizer for ``model``: see the module docstring for the groups.

    ``optim_config.name == "adamw"``: one AdamW with groups ``adamw_decay`` (hidden matrices,
    embedding, LM head), ``router`` and ``adamw_no_decay`` (vectors). ``"muon"``: a
    :class:`CombinedOptimizer` of ``{"muon": Muon, "adamw": AdamW}`` with groups ``muon`` (hidden
    matrices), ``adamw_decay`` (embedding, LM head), ``router`` and ``adamw_no_decay`` (vectors).
    Groups with no parameters are left out. QK-Clip (:func:`harness.optim.qk_clip.qk_clip_`) is
    applied by the trainer after ``step()``.
    """
    if optim_config.name not in ("adamw", "muon"):
        raise ValueError(f"optim.name must be 'adamw' or 'muon', got {optim_config.name!r}")
    parts = split_params(model)
    oc = optim_config
    muon = oc.name == "muon"
    adamw_lr = (oc.adamw_lr or oc.lr) if muon else oc.lr
    router_wd = oc.weight_decay if oc.router_weight_decay is None else oc.router_weight_decay
    adamw_groups = [
        _group("adamw_decay", "adamw", ([] if muon else parts["hidden"]) + parts["matrix"],
               adamw_lr, oc.weight_decay),
        _group("router", "adamw", parts["router"], oc.router_lr or adamw_lr, router_wd),
        _group("adamw_no_decay", "adamw", parts["vector"], adamw_lr, 0.0),
    ]
    adamw_groups = [g for g in adamw_groups if g["params"]]
    if not muon:
        return _adamw(adamw_groups, oc)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if parts["hidden"]:
        optimizers["muon"] = Muon(
            [_group("muon", "muon", parts["hidden"], oc.lr, oc.weight_decay)],
            lr=oc.lr,
            weight_decay=oc.weight_decay,
            momentum=oc.momentum,
            nesterov=oc.nesterov,
            ns_steps=oc.ns_steps,
            update_scale=oc.update_scale,
            skip_idle=oc.muon_skip_idle,
        )
    if adamw_groups:
        optimizers["adamw"] = _adamw(adamw_groups, oc)
    return CombinedOptimizer(optimizers)


def _group(name: str, kind: str, params: NamedParams, lr: float, wd: float) -> dict[str, Any]:
    """One param group with the keys of the module docstring (``lr`` starts at the peak)."""
    return {"params": params, "name": name, "kind": kind, "base_lr": lr, "lr": lr,
            "weight_decay": wd}


def describe_groups(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """Per param group: kind, base_lr, weight_decay, tensor and element counts, parameter names.

    For logging at the start of a trial; keyed by the group's ``name`` (``group_<i>`` without one).
    """
    out: dict[str, dict[str, Any]] = {}
    for i, g in enumerate(optimizer.param_groups):
        out[g.get("name", f"group_{i}")] = {
            "kind": g.get("kind", type(optimizer).__name__.lower()),
            "base_lr": g.get("base_lr", g["lr"]),
            "weight_decay": g.get("weight_decay", 0.0),
            "n_tensors": len(g["params"]),
            "n_elements": sum(p.numel() for p in g["params"]),
            "param_names": list(g.get("param_names", [])),
        }
    return out
