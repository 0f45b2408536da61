"""Muon: momentum, then Newton-Schulz orthogonalisation, for the hidden matrices of a transformer.

Three layers, each usable alone:

- :func:`newton_schulz` orthogonalises a batch of matrices ``[..., n, m]`` (each on its own);
- :func:`muon_update` advances the momentum of a list of same-shape gradients and returns their
  orthogonalised updates with one batched Newton-Schulz call;
- :class:`Muon` is the ``torch.optim.Optimizer``: decoupled weight decay, the update scale, and
  bucketing of same-shape parameters (2-D matrices and 3-D expert stacks ``[E, n, m]``) so that one
  Newton-Schulz call covers a whole shape bucket instead of a Python loop over matrices or experts.

On 2-D parameters the result equals ``torch.optim.Muon`` (PyTorch >= 2.9) when both run
Newton-Schulz in the same dtype: EMA momentum ``buf.lerp_(g, 1 - mu)``, Nesterov
``g.lerp(buf, mu)``, ``p *= 1 - lr * wd``, then ``p -= lr * scale * O``.

Sources: KellerJordan/Muon ``muon.py`` (the iteration, its coefficients, EMA momentum, the
"original" scale); Moonlight, "Muon is Scalable for LLM Training", arXiv 2502.16982 (decoupled
weight decay and the "match_rms_adamw" scale ``0.2 * sqrt(max(A, B))``, Table 8); PyTorch
``torch/optim/_muon.py`` (the semantics matched here).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

UpdateScale = Literal["match_rms_adamw", "original"]
BucketKey = tuple[torch.Size, torch.dtype, torch.device]

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""Quintic coefficients (a, b, c) of KellerJordan/Muon: slope 3.4445 at zero, so small singular
values grow fast; the iteration does not converge to exactly 1 but leaves singular values in about
[0.7, 1.2] after 5 steps, which trains as well as an exact ``U V^T`` (KellerJordan's post)."""

NS_EPS = 1e-7
"""Added to each matrix's Frobenius norm before dividing (KellerJordan/Muon)."""


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coeffs: tuple[float, float, float] = NS_COEFFICIENTS,
    *,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximately orthogonalise every matrix of ``G`` ``[..., n, m]``: ``U S V^T -> U S' V^T``.

    Each matrix is divided by its own Frobenius norm (+ ``eps``), so all singular values start in
    [0, 1]; a wide matrix (``n <= m``) is iterated as is, a tall one on its transpose, so the Gram
    matrix ``X X^T`` is the smaller one. Each of the ``steps`` iterations is
    ``A = X X^T; B = b A + c A^2; X = a X + B X``, an odd polynomial applied to every singular value
    with ``U`` and ``V`` unchanged. Singular values ``s / ||G||_F >= 2e-3`` land in about
    [0.68, 1.21] after 5 steps with the default coefficients; smaller ones (a matrix's near-null
    space) are amplified about 3.44x per step and stay below that band.

    All leading dims form one batch: one ``baddbmm`` per product for all matrices. ``dtype`` is the
    arithmetic dtype (None: bfloat16 on CUDA as in KellerJordan/Muon and ``torch.optim.Muon``,
    else ``G``'s dtype, at least float32). The result has ``G``'s dtype and shape.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs matrices [..., n, m], got shape {tuple(G.shape)}")
    if steps < 0:
        raise ValueError(f"steps ({steps}) must be >= 0")
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.promote_types(G.dtype, torch.float32)
    a, b, c = coeffs
    tall = G.size(-2) > G.size(-1)
    X = G.to(dtype)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    batch_shape = X.shape
    X = X.reshape(-1, *batch_shape[-2:])  # (N, n, m), n <= m
    for _ in range(steps):
        A = X @ X.mT  # (N, n, n)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    X = X.reshape(batch_shape)
    if tall:
        X = X.mT
    return X.to(G.dtype)


def newton_schulz_sharded(G: Tensor, rank: int, size: int, **kwargs: Any) -> Tensor:
    """:func:`newton_schulz` of every matrix of ``G`` ``[..., n, m]``, the work split over the
    ``size`` ranks of the default ``torch.distributed`` group: each rank orthogonalises one
    contiguous share of the matrices (the batch padded with zero matrices, which stay zero, to a
    multiple of ``size``) and ``all_gather`` gives every rank all of them. Every rank must call it
    with the same ``G``; the result equals ``newton_schulz(G)`` to float tolerance (each matrix
    is iterated on its own either way; the batch it is computed in differs)."""
    import torch.distributed as dist

    shape = G.shape
    X = G.reshape(-1, *shape[-2:])  # (N, n, m)
    n = X.shape[0]
    per = -(-n // size)
    if per * size > n:
        X = torch.cat([X, X.new_zeros(per * size - n, *shape[-2:])])  # (per * size, n, m)
    mine = newton_schulz(X[rank * per:(rank + 1) * per], **kwargs).contiguous()  # (per, n, m)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine)
    return torch.cat(parts)[:n].reshape(shape)


def update_scale_factor(shape: Sequence[int], mode: UpdateScale) -> float:
    """Multiplier of the learning rate for a matrix update of ``shape`` (A, B = last two dims).

    ``"match_rms_adamw"`` (Moonlight, arXiv 2502.16982 section 2.2): ``0.2 * sqrt(max(A, B))``
    gives the orthogonalised update an RMS of about 0.2, that of a typical AdamW update, so AdamW's
    lr and weight decay carry over. ``"original"`` (KellerJordan/Muon): ``sqrt(max(1, A / B))``.
    An expert stack ``[E, A, B]`` is scaled as each of its ``[A, B]`` matrices.
    """
    A, B = shape[-2], shape[-1]
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    if mode == "original":
        return math.sqrt(max(1, A / B))
    raise ValueError(f"update_scale must be 'match_rms_adamw' or 'original', got {mode!r}")


def muon_update(
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    coeffs: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
    shard: tuple[int, int] | None = None,
) -> list[Tensor]:
    """Momentum + Newton-Schulz for same-shape gradients; returns the unscaled updates ``O``.

    ``shard`` = (rank, world size): the Newton-Schulz batch is split over the ranks
    (:func:`newton_schulz_sharded`); every rank must pass the same gradients and buffers.

    Mutates only ``momentum_buffers`` (the EMA of KellerJordan/Muon and ``torch.optim.Muon``:
    ``buf.lerp_(g, 1 - momentum)``); Nesterov feeds ``g.lerp(buf, momentum)`` to Newton-Schulz,
    else ``buf``. Moonlight's plain-sum momentum differs only by a scale that the Frobenius
    normalisation removes. All gradients are stacked into one batched :func:`newton_schulz` call,
    so ``k`` expert stacks ``[E, n, m]`` make one ``[k * E, n, m]`` batch.
    """
    if len(grads) != len(momentum_buffers):
        raise ValueError(f"{len(grads)} grads but {len(momentum_buffers)} momentum buffers")
    if not grads:
        return []
    torch._foreach_lerp_(list(momentum_buffers), list(grads), 1 - momentum)
    if nesterov:
        moms = torch._foreach_lerp(list(grads), list(momentum_buffers), momentum)
    else:
        moms = list(momentum_buffers)
    stacked = torch.stack(moms) if len(moms) > 1 else moms[0].unsqueeze(0)
    kwargs: dict[str, Any] = {"steps": ns_steps, "coeffs": coeffs, "eps": eps, "dtype": dtype}
    if shard is not None and shard[1] > 1:
        return list(newton_schulz_sharded(stacked, *shard, **kwargs).unbind(0))
    return list(newton_schulz(stacked, **kwargs).unbind(0))


class Muon(torch.optim.Optimizer):
    """Muon for hidden matrices (``ndim >= 2``): ``p <- p (1 - lr wd) - lr * scale * NS(momentum)``.

    Use it only for the hidden weights of the transformer blocks; embeddings, the LM head, norms,
    biases and the router belong to AdamW (KellerJordan/Muon; Moonlight; Kimi K2 report
    arXiv 2507.20534). A parameter of shape ``[..., A, B]`` is a batch of ``[A, B]`` matrices, each
    orthogonalised and scaled on its own (MoE expert stacks ``[E, A, B]``).

    Per step and param group, parameters with a gradient are bucketed by (shape, dtype, device)
    and each bucket gets one batched Newton-Schulz call. Weight decay is decoupled and uses the
    unscaled lr (Moonlight eq. 4; ``torch.optim.Muon``). Group keys: ``lr``, ``weight_decay``,
    ``momentum``, ``nesterov``, ``ns_steps``, ``ns_coefficients``, ``eps``, ``update_scale``
    (:func:`update_scale_factor`). ``ns_dtype`` (None: bfloat16 on CUDA, float32 on CPU) is an
    attribute, not a group key, so state dicts stay device-agnostic.

    ``skip_idle`` (group key): a matrix of a stack ``[..., A, B]`` whose gradient is all zero
    this step (an expert that got no tokens) is left alone: no update, no momentum decay, no
    weight decay. Without it, Newton-Schulz normalises the idle expert's stale momentum to a
    full-size update every step, so an expert without tokens keeps drifting (measured: update RMS
    3.1e-3 for idle experts vs 3.4e-3 for live ones). 2-D parameters are never skipped.

    Telemetry (read lazily, one host sync per read, none per parameter):
    ``last_update_rms`` is the RMS over all Muon elements of the last step's ``scale * O``, the
    lr-free "update RMS" of Moonlight (about 0.2 under ``match_rms_adamw``);
    ``last_step_rms`` is the RMS of the parameter change ``lr * scale * O`` (weight decay excluded).
    Both are None before the first step.

    Data parallel: with ``shard = (rank, world size)`` (an attribute; the trainer sets it on
    every rank of a multi-worker trial, whose gradients are all-reduced) each rank runs
    Newton-Schulz on a share of every bucket and gathers the rest (:func:`newton_schulz_sharded`),
    instead of every rank orthogonalising every matrix; momentum and the update itself stay on
    every rank, so all ranks hold the same weights and state. ``ns_seconds`` accumulates the
    wall time spent in Newton-Schulz (its gather included) when ``time_ns`` is set (the bench).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        update_scale: UpdateScale = "match_rms_adamw",
        ns_dtype: torch.dtype | None = None,
        skip_idle: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr ({lr}) must be >= 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay ({weight_decay}) must be >= 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum ({momentum}) must be in [0, 1)")
        if ns_steps < 1:
            raise ValueError(f"ns_steps ({ns_steps}) must be >= 1")
        update_scale_factor((1, 1), update_scale)
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "ns_coefficients": tuple(ns_coefficients),
            "eps": eps,
            "update_scale": update_scale,
            "skip_idle": skip_idle,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        f"Muon needs matrices (ndim >= 2); got a parameter of shape "
                        f"{tuple(p.shape)}: give it to AdamW"
                    )
        self.ns_dtype = ns_dtype
        self.shard: tuple[int, int] | None = None
        self.time_ns = False
        self.ns_seconds = 0.0
        self._update_sq: Tensor | None = None
        self._step_sq: Tensor | None = None
        self._update_numel = 0

    @property
    def last_update_rms(self) -> float | None:
        """RMS of ``scale * O`` over all parameters updated by the last step (lr-free)."""
        if self._update_sq is None or not self._update_numel:
            return None
        return math.sqrt(float(self._update_sq) / self._update_numel)

    @property
    def last_step_rms(self) -> float | None:
        """RMS of the last step's parameter change ``lr * scale * O`` (weight decay excluded)."""
        if self._step_sq is None or not self._update_numel:
            return None
        return math.sqrt(float(self._step_sq) / self._update_numel)

    def _ns_dtype_for(self, p: Tensor) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        return torch.bfloat16 if p.is_cuda else torch.promote_types(p.dtype, torch.float32)

    def _clock(self, p: Tensor) -> float:
        """Wall time for ``ns_seconds`` (CUDA synchronised first), 0 unless ``time_ns``."""
        if not self.time_ns:
            return 0.0
        if p.is_cuda:
            torch.cuda.synchronize(p.device)
        return time.perf_counter()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Muon step over every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update_sq: list[Tensor] = []
        step_sq: list[Tensor] = []
        numel = 0
        for group in self.param_groups:
            buckets: dict[BucketKey, list[tuple[Tensor, Tensor]]] = defaultdict(list)
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("Muon does not support complex parameters")
                buckets[(p.shape, p.dtype, p.device)].append((p, g))
            lr, wd = group["lr"], group["weight_decay"]
            for (shape, _, _), pairs in buckets.items():
                params = [p for p, _ in pairs]
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                grads = [g for _, g in pairs]
                idle = _idle_slices(grads) if group.get("skip_idle") and len(shape) > 2 else None
                kept = [b.clone() for b in bufs] if idle is not None else None
                t0 = self._clock(params[0])
                updates = muon_update(
                    grads,
                    bufs,
                    momentum=group["momentum"],
                    nesterov=group["nesterov"],
                    ns_steps=group["ns_steps"],
                    coeffs=group["ns_coefficients"],
                    eps=group["eps"],
                    dtype=self._ns_dtype_for(params[0]),
                    shard=self.shard,
                )
                self.ns_seconds += self._clock(params[0]) - t0
                ratio = update_scale_factor(shape, group["update_scale"])
                adjusted_lr = lr * ratio
                active = 1.0
                if idle is not None and kept is not None:
                    updates, active = _leave_idle(params, bufs, kept, idle, updates, lr * wd)
                elif wd != 0:
                    torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_add_(params, updates, alpha=-adjusted_lr)
                sq = torch.stack(torch._foreach_norm(updates)).float().square().sum()
                update_sq.append(sq * ratio**2)
                step_sq.append(sq * adjusted_lr**2)
                numel += round(active * sum(u.numel() for u in updates))
        if update_sq:
            device = update_sq[0].device
            self._update_sq = torch.stack([s.to(device) for s in update_sq]).sum()
            self._step_sq = torch.stack([s.to(device) for s in step_sq]).sum()
            self._update_numel = numel
        return loss


def _leave_idle(
    params: list[Tensor],
    bufs: list[Tensor],
    kept: list[Tensor],
    idle: list[Tensor],
    updates: list[Tensor],
    decay: float,
) -> tuple[list[Tensor], float]:
    """Undo this step's momentum change on idle matrices, zero their updates and decay only the
    live ones (``p *= 1 - decay``); returns the updates and the fraction of live matrices."""
    live = [(~m).to(p.dtype)[..., None, None] for m, p in zip(idle, params, strict=True)]
    for buf, old, m in zip(bufs, kept, idle, strict=True):
        buf[m] = old[m]
    if decay:
        for p, lv in zip(params, live, strict=True):
            p.mul_(1 - decay * lv)
    updates = [u * lv for u, lv in zip(updates, live, strict=True)]
    return updates, float(torch.stack([(~m).float().mean() for m in idle]).mean())


def _idle_slices(grads: Sequence[Tensor]) -> list[Tensor]:
    """Per gradient ``[..., A, B]``, a bool mask ``[...]`` of its all-zero ``[A, B]`` matrices."""
    return [g.flatten(-2).abs().amax(dim=-1) == 0 for g in grads]
