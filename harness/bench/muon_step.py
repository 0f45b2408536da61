"""Case 3: one Muon step over the reference model's expert stacks, batched vs per-matrix.

The matrices are the routed-expert weights of every MoE layer of the reference model: stacks
``w1``, ``w3`` (E, F, D) and ``w2`` (E, D, F). ``ours`` is :class:`harness.optim.Muon` over the
stacks (one batched Newton-Schulz call per shape bucket); ``torch`` is ``torch.optim.Muon`` over
the same E x 3 x layers matrices as separate 2-D parameters (one NS per matrix, as it has no
batched path). Both use lr 0.02, weight decay 0.1, momentum 0.95 Nesterov, 5 NS steps and the
Moonlight update scale, and the same gradients.

``torch.optim.Muon`` runs NS in bfloat16 on every device; ours uses bfloat16 on CUDA and float32
on CPU by default. ``ours_bf16`` (NS in bfloat16, as torch) is the like-for-like variant that the
goal compares; ``ours`` (the default dtype) is reported beside it. After one step from the same
state, ``ours_bf16`` and ``torch`` agree to bf16 rounding (checked, not assumed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.bench.timing import Summary, interleaved, paired_ratio, summarise, synchronizer
from harness.config import ModelConfig
from harness.optim import Muon

log = logging.getLogger(__name__)

SETTINGS: dict[str, Any] = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95,
                            "nesterov": True, "ns_steps": 5}


def expert_stacks(cfg: ModelConfig, device: torch.device) -> list[nn.Parameter]:
    """Random (E, F, D), (E, F, D), (E, D, F) stacks per MoE layer, each with a random grad."""
    gen = torch.Generator().manual_seed(0)
    m, D = cfg.moe, cfg.d_model
    E, Fh = m.n_routed_experts, m.expert_ffn_dim
    stacks = []
    for _ in range(cfg.n_moe_layers):
        for shape in ((E, Fh, D), (E, Fh, D), (E, D, Fh)):
            p = nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device))
            p.grad = torch.randn(shape, generator=gen).to(device)
            stacks.append(p)
    return stacks


def _split(stacks: list[nn.Parameter]) -> list[nn.Parameter]:
    """The same matrices as separate 2-D parameters (copies), grads included."""
    mats = []
    for s in stacks:
        assert s.grad is not None
        for w, g in zip(s.detach().unbind(0), s.grad.unbind(0), strict=True):
            p = nn.Parameter(w.clone())
            p.grad = g.clone()
            mats.append(p)
    return mats


def _clone(stacks: list[nn.Parameter]) -> list[nn.Parameter]:
    out = []
    for s in stacks:
        p = nn.Parameter(s.detach().clone())
        p.grad = None if s.grad is None else s.grad.clone()
        out.append(p)
    return out


def _optimizers(
    stacks: list[nn.Parameter],
) -> tuple[dict[str, torch.optim.Optimizer], list[nn.Parameter], list[nn.Parameter]]:
    """``ours`` (default NS dtype), ``ours_bf16`` and ``torch`` over fresh copies of ``stacks``."""
    ours_bf16_params = _clone(stacks)
    torch_params = _split(stacks)
    opts: dict[str, torch.optim.Optimizer] = {
        "ours_bf16": Muon(ours_bf16_params, update_scale="match_rms_adamw",
                          ns_dtype=torch.bfloat16, **SETTINGS),
        "ours": Muon(_clone(stacks), update_scale="match_rms_adamw", **SETTINGS),
        "torch": torch.optim.Muon(torch_params, adjust_lr_fn="match_rms_adamw", **SETTINGS),
    }
    return opts, ours_bf16_params, torch_params


def run_muon_step(
    cfg: ModelConfig,
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Time one step of each optimizer, interleaved; check bf16 parity after the first step."""
    stacks = expert_stacks(cfg, device)
    opts, ours_params, torch_params = _optimizers(stacks)
    opts["ours_bf16"].step()
    opts["torch"].step()
    ours_flat = torch.cat([p.detach().reshape(-1) for p in ours_params])
    torch_flat = torch.cat([p.detach().reshape(-1) for p in torch_params])
    moved = torch.cat([p.detach().reshape(-1) for p in stacks])
    diff = float((ours_flat - torch_flat).abs().max())
    step_size = float((torch_flat - moved).abs().max())
    fns: dict[str, Callable[[], object]] = {name: opt.step for name, opt in opts.items()}
    log.info("muon step: %s x %d rounds", ", ".join(fns), repeats)
    cpu: dict[str, list[float]] = {}
    t = interleaved(fns, warmup=warmup, repeats=repeats, sync=synchronizer(device),
                    budget_s=budget_s, cpu_out=cpu)
    n_mats = len(torch_params)
    return {
        "matrices": n_mats,
        "matrix_shapes": sorted({tuple(p.shape) for p in torch_params}),
        "timings_s": summarise(t),
        "cpu_s": summarise(cpu),
        "ratios": {
            "torch_over_ours_bf16": paired_ratio(t, "torch", "ours_bf16").to_dict(),
            "torch_over_ours": paired_ratio(t, "torch", "ours").to_dict(),
        },
        "ms_per_matrix": {n: 1e3 * Summary.of(ts).median / n_mats for n, ts in t.items()},
        "parity_max_abs_diff_bf16": diff,
        "parity_max_step": step_size,
    }
