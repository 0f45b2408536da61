"""Case 1: one MoE layer, forward + backward, our dispatch against the alternatives.

Variants, all on the same weights and the same input (N tokens of width D), each timed as
forward, then backward of a fixed random output gradient, gradients reset between calls:

- ``ours``: :class:`harness.model.moe.MoE` (router, sorted dispatch, shared expert);
- ``naive``: the same router and shared expert around :func:`moe_forward_naive` (a loop over
  experts with boolean masks and an out-of-place ``index_add`` per expert);
- ``hf_<impl>``: ``transformers``' ``DeepseekV3MoE`` with each experts implementation that fits
  in memory (``batched_mm`` gathers one (2F, D) and one (D, F) matrix per slot);
- ``dense``: a SwiGLU of hidden (top_k + n_shared) * F, the same active matmul FLOPs without
  routing: ``ours / dense`` is the MoE overhead, whose physical floor is 1.0.

On CUDA everything runs under bf16 autocast, weights in float32, as in training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from harness.bench.hf import EXPERT_IMPLS, hf_moe_from_ours, set_experts_impl
from harness.bench.profiling import top_ops
from harness.bench.timing import Summary, interleaved, paired_ratio, summarise, synchronizer
from harness.config import ModelConfig, MoEConfig
from harness.model.layers import SwiGLU
from harness.model.moe import MoE, moe_forward_naive, route

log = logging.getLogger(__name__)

BATCHED_MM_LIMIT_BYTES = 2 << 30
"""Largest weight gather HF ``batched_mm`` may allocate here; above it the variant is skipped."""


@dataclass(frozen=True)
class MoEShape:
    """The MoE layer under test: tokens N, width D, expert hidden F, E experts, top-K, shared."""

    tokens: int = 8192
    d_model: int = 256
    expert_ffn: int = 128
    n_experts: int = 64
    top_k: int = 8
    n_shared: int = 1

    @property
    def dense_hidden(self) -> int:
        """Hidden width of the dense SwiGLU with the same active FLOPs: (K + shared) * F."""
        return (self.top_k + self.n_shared) * self.expert_ffn

    def model_config(self) -> ModelConfig:
        moe = MoEConfig(
            n_routed_experts=self.n_experts,
            top_k=self.top_k,
            n_shared=self.n_shared,
            expert_ffn_dim=self.expert_ffn,
        )
        return ModelConfig(d_model=self.d_model, moe=moe)

    def train_flops(self) -> float:
        """Forward + backward matmul FLOPs of the experts (3 x forward), router excluded."""
        return 3 * 2 * self.tokens * self.d_model * self.dense_hidden * 3.0


def _fwd_bwd(forward: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor) -> Callable[[], None]:
    def step() -> None:
        xx = x.detach().requires_grad_()
        forward(xx).backward(grad)

    return step


def _naive(moe: MoE) -> Callable[[Tensor], Tensor]:
    def forward(x_ND: Tensor) -> Tensor:
        r = route(x_ND, moe.gate.weight, moe.e_score_bias, moe.cfg)
        e = moe.experts
        y = moe_forward_naive(x_ND, r.idx, r.weight, e.w1, e.w3, e.w2)
        return y + moe.shared(x_ND) if moe.shared is not None else y

    return forward


def _hf(hf: nn.Module, impl: str) -> Callable[[Tensor], Tensor]:
    def forward(x_ND: Tensor) -> Tensor:
        set_experts_impl(hf.experts.config, impl)
        return hf(x_ND.unsqueeze(0)).squeeze(0)

    return forward


def _autocast(device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    return lambda: torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


def _with(
    ctx: Callable[[], AbstractContextManager[Any]], fn: Callable[[], None]
) -> Callable[[], None]:
    def run() -> None:
        with ctx():
            fn()

    return run


def run_moe_layer(
    shape: MoEShape,
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
    hf: bool = True,
    profile: bool = False,
) -> dict[str, Any]:
    """Time every variant; return timings, paired ratios, FLOP/s and an output check.

    With ``profile``, one more call of ``ours`` and of ``dense`` runs under the profiler.
    """
    torch.manual_seed(0)
    cfg = shape.model_config()
    moe = MoE(cfg).to(device)
    dense = SwiGLU(shape.d_model, shape.dense_hidden).to(device)
    x = torch.randn(shape.tokens, shape.d_model, device=device)
    grad = torch.randn(shape.tokens, shape.d_model, device=device)
    modules: list[nn.Module] = [moe, dense]

    def ours(x_ND: Tensor) -> Tensor:
        return moe(x_ND.unsqueeze(0))[0].squeeze(0)

    fns: dict[str, Callable[[Tensor], Tensor]] = {"ours": ours, "naive": _naive(moe)}
    skipped: dict[str, str] = {}
    hf_impls: list[str] = []
    if hf:
        hf_moe = hf_moe_from_ours(moe, cfg)
        modules.append(hf_moe)
        gather = shape.tokens * shape.top_k * 3 * shape.expert_ffn * shape.d_model * 4
        for impl in EXPERT_IMPLS:
            if impl == "batched_mm" and gather > BATCHED_MM_LIMIT_BYTES:
                skipped[f"hf_{impl}"] = (
                    f"would gather {gather / 2**30:.1f} GiB of expert weights "
                    f"(limit {BATCHED_MM_LIMIT_BYTES / 2**30:.0f} GiB)"
                )
                continue
            fns[f"hf_{impl}"] = _hf(hf_moe, impl)
            hf_impls.append(f"hf_{impl}")
    fns["dense"] = dense
    ctx = _autocast(device)
    check = _check_outputs(fns, x, ctx)

    def zero() -> None:
        for m in modules:
            m.zero_grad(set_to_none=True)

    steps = {name: _with(ctx, _fwd_bwd(f, x, grad)) for name, f in fns.items()}
    log.info("moe layer: %s x %d rounds", ", ".join(steps), repeats)
    cpu: dict[str, list[float]] = {}
    t = interleaved(steps, warmup=warmup, repeats=repeats, sync=synchronizer(device),
                    between=zero, budget_s=budget_s, cpu_out=cpu)
    profiles = {}
    if profile:
        for name in ("ours", "dense"):
            zero()
            profiles[name] = top_ops(steps[name], device)
    ratios: dict[str, Summary] = {
        "ours_over_dense": paired_ratio(t, "ours", "dense"),
        "naive_over_ours": paired_ratio(t, "naive", "ours"),
    }
    best_hf = min(hf_impls, key=lambda n: Summary.of(t[n]).median) if hf_impls else None
    for name in hf_impls:
        ratios[f"{name}_over_ours"] = paired_ratio(t, name, "ours")
    flops = shape.train_flops()
    return {
        "shape": shape.__dict__ | {"dense_hidden": shape.dense_hidden},
        "train_flops": flops,
        "timings_s": summarise(t),
        "cpu_s": summarise(cpu),
        "gflop_per_s": {n: flops / Summary.of(ts).median / 1e9 for n, ts in t.items()},
        "ratios": {k: v.to_dict() for k, v in ratios.items()},
        "best_hf": best_hf,
        "skipped_variants": skipped,
        "max_abs_diff_vs_ours": check,
        "profile": profiles,
    }


@torch.no_grad()
def _check_outputs(
    fns: dict[str, Callable[[Tensor], Tensor]],
    x: Tensor,
    ctx: Callable[[], AbstractContextManager[Any]],
) -> dict[str, float]:
    """Max |y - y_ours| of every MoE variant (the dense FFN computes something else)."""
    with ctx():
        ref = fns["ours"](x).float()
        return {
            name: float((f(x).float() - ref).abs().max())
            for name, f in fns.items()
            if name not in ("ours", "dense")
        }
