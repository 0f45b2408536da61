"""Case 2: one training step of a reference model, ours (AdamW and Muon) against HF, and MFU.

A step is :meth:`harness.trainer.Trainer.train_step`: batch, forward (bf16 autocast on CUDA),
cross-entropy, backward, gradient clipping, optimizer step, router-bias update. ``hf_adamw`` is
the same step for ``transformers``' ``DeepseekV3ForCausalLM`` holding a copy of our weights, with
``torch.optim.AdamW`` and the same clipping. Each round also times a large GEMM (float32 2048^3
on CPU, bf16 8192^3 on CUDA): the machine's matmul peak *in that round*, so that the MFU
(achieved model FLOP/s over the GEMM rate) is a same-round ratio, robust to drift of a shared
machine. Model FLOPs are ``ModelConfig.flops_per_token`` (active parameters; Muon's
Newton-Schulz is optimizer work, not model FLOPs, and is not counted).

The optimizer's share of the step is timed inside the real step with optimizer step hooks and
set next to the Newton-Schulz FLOP bound T*m/B (Jordan et al. 2024, "Muon: An optimizer for
hidden layers": T NS steps, m model width, B batch tokens) and the exact NS FLOPs of this model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.bench.hf import hf_model_from_ours, set_experts_impl
from harness.bench.profiling import top_ops
from harness.bench.timing import Summary, gemm_flops_per_s, interleaved, summarise, synchronizer
from harness.config import ModelConfig, OptimConfig, TrialConfig
from harness.data import TokenData, train_batch
from harness.env import device_peak_flops
from harness.optim import split_params
from harness.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainShape:
    """The reference model (ModelConfig fields) and the step's batch."""

    model: dict[str, Any] = field(default_factory=dict)
    batch_tokens: int = 8192
    seq_len: int = 256
    gemm_n: int = 2048

    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate({"max_seq_len": self.seq_len, **self.model})


REFERENCE_MODEL: dict[str, Any] = {
    "d_model": 256, "n_layers": 4, "first_k_dense": 1, "dense_ffn_dim": 1152, "vocab_size": 256,
    "attention": {"kind": "mla", "n_heads": 4, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
                  "qk_rope_head_dim": 16, "v_head_dim": 32},
    "moe": {"n_routed_experts": 64, "top_k": 8, "n_shared": 1, "expert_ffn_dim": 128},
}
"""CPU reference: MLA, 4 layers (1 dense), d 256, 64 experts top-8 + 1 shared, F 128."""

GPU_MODEL: dict[str, Any] = {
    "d_model": 768, "n_layers": 12, "first_k_dense": 1, "dense_ffn_dim": 3456, "vocab_size": 32768,
    "attention": {"kind": "mla", "n_heads": 12, "kv_lora_rank": 256, "qk_nope_head_dim": 64,
                  "qk_rope_head_dim": 32, "v_head_dim": 64},
    "moe": {"n_routed_experts": 64, "top_k": 8, "n_shared": 1, "expert_ffn_dim": 384},
}
"""CUDA reference: about 100M active parameters, 64 experts top-8 + 1 shared."""


def _data(vocab: int, seq_len: int, tokens: int) -> TokenData:
    rng = np.random.default_rng(0)
    train = rng.integers(0, vocab, size=tokens, dtype=np.int64).astype(np.uint16)
    val = rng.integers(0, vocab, size=4 * seq_len + 1, dtype=np.int64).astype(np.uint16)
    return TokenData(train, val, vocab, {"corpus": "bench-random"}, test=val)


def _trial(shape: TrainShape, optim: str, device: torch.device) -> TrialConfig:
    cfg = shape.model_config()
    return TrialConfig.model_validate({
        "model": cfg.model_dump(),
        "optim": {"name": optim, "lr": 0.02 if optim == "muon" else 3e-3, "adamw_lr": 3e-3},
        "data": {"corpus": "synthetic", "synthetic_vocab": min(cfg.vocab_size, 65536),
                 "val_tokens": 4 * shape.seq_len},
        "train": {"tokens": 1000 * shape.batch_tokens, "batch_tokens": shape.batch_tokens,
                  "seq_len": shape.seq_len, "device": device.type},
    })


class StepClock:
    """Seconds spent in ``optimizer.step()``, measured by step pre/post hooks (synchronised)."""

    def __init__(self, optimizer: torch.optim.Optimizer, sync: Callable[[], None]) -> None:
        self.last = math.nan
        self._t0 = 0.0
        self._sync = sync
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.last = time.perf_counter() - self._t0


def ns_flops(model: torch.nn.Module, ns_steps: int) -> float:
    """Newton-Schulz FLOPs of one Muon step over the model's hidden matrices.

    Per [n, m] matrix (n <= m) and iteration: X X^T (2 n^2 m), A^2 (2 n^3), B X (2 n^2 m).
    """
    total = 0.0
    for _, p in split_params(model)["hidden"]:
        n, m = sorted(p.shape[-2:])
        total += (p.numel() // (n * m)) * ns_steps * (4 * n * n * m + 2 * n**3)
    return total


class _HFStep:
    """One HF training step: forward, CE, backward, clip, AdamW, zero_grad."""

    def __init__(self, hf: torch.nn.Module, data: TokenData, shape: TrainShape,
                 device: torch.device, optim: OptimConfig, grad_clip: float | None) -> None:
        self.hf, self.data, self.shape, self.device = hf, data, shape, device
        self.params = [p for p in hf.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                     weight_decay=optim.weight_decay)
        self.grad_clip = grad_clip or math.inf
        self.step = 0

    def __call__(self) -> None:
        B = self.shape.batch_tokens // self.shape.seq_len
        x, y = train_batch(self.data, self.shape.seq_len, B, 0, self.step)
        x, y = x.to(self.device), y.to(self.device)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.hf(input_ids=x).logits  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        loss.item()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1


def _pick_hf(step: _HFStep, sync: Callable[[], None],
             experts_impls: tuple[str, ...]) -> dict[str, float]:
    """Time one step per HF (attention, experts) implementation pair after a warm one; keep the
    fastest pair (the fastest ``transformers`` path of this step). Keys: ``attention/experts``."""
    seconds: dict[str, float] = {}
    for attn in ("sdpa", "eager"):
        step.hf.set_attn_implementation(attn)
        for experts in experts_impls:
            set_experts_impl(step.hf.config, experts)
            step()
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            seconds[f"{attn}/{experts}"] = time.perf_counter() - t0
    attn, experts = min(seconds, key=seconds.__getitem__).split("/")
    step.hf.set_attn_implementation(attn)
    set_experts_impl(step.hf.config, experts)
    return seconds


@torch.no_grad()
def _logit_diff(trainer: Trainer, hf: torch.nn.Module, data: TokenData, seq_len: int) -> float:
    x, _ = train_batch(data, seq_len, 2, 1, 0)
    x = x.to(trainer.device)
    trainer.model.eval()
    hf.eval()
    ours = trainer.model(x)[0]
    theirs = hf(input_ids=x).logits
    trainer.model.train()
    hf.train()
    return float((ours - theirs).abs().max())


def run_train_step(
    shape: TrainShape,
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
    hf: bool = True,
    hf_experts_impls: tuple[str, ...] = ("eager", "grouped_mm"),
    profile: bool = False,
) -> dict[str, Any]:
    """Time the step of each arm with a same-round GEMM; return tokens/s, MFU, shares.

    With ``profile``, one more step of ``ours_adamw`` and ``ours_muon`` runs under the profiler.
    """
    cfg = shape.model_config()
    sync = synchronizer(device)
    gemm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    data = _data(cfg.vocab_size, shape.seq_len, max(64 * shape.batch_tokens, 1 << 20))
    trainers = {name: Trainer(_trial(shape, name, device), data, device)
                for name in ("adamw", "muon")}
    opt_s: dict[str, list[float]] = {"ours_adamw": [], "ours_muon": []}
    gemm_rates: list[float] = []

    def gemm() -> None:
        gemm_rates.append(gemm_flops_per_s(shape.gemm_n, device, gemm_dtype))

    fns: dict[str, Callable[[], object]] = {"gemm": gemm}
    for name, trainer in trainers.items():
        fns[f"ours_{name}"] = _clocked(trainer, StepClock(trainer.optimizer, sync),
                                       opt_s[f"ours_{name}"])
    extra: dict[str, Any] = {}
    if hf:
        model = hf_model_from_ours(trainers["adamw"].model, hf_experts_impls[0]).train()
        extra["hf_max_abs_logit_diff"] = _logit_diff(trainers["adamw"], model, data, shape.seq_len)
        hf_step = _HFStep(model, data, shape, device, trainers["adamw"].trial.optim,
                          trainers["adamw"].trial.train.grad_clip)
        extra["hf_impl_s"] = _pick_hf(hf_step, sync, hf_experts_impls)
        extra["hf_attention"] = model.config._attn_implementation
        extra["hf_experts"] = model.config._experts_implementation
        fns["hf_adamw"] = hf_step
    log.info("train step: %s x %d rounds", ", ".join(fns), repeats)
    cpu: dict[str, list[float]] = {}
    t = interleaved(fns, warmup=warmup, repeats=repeats, sync=sync, budget_s=budget_s,
                    cpu_out=cpu)
    extra["cpu_s"] = summarise({k: v for k, v in cpu.items() if k != "gemm"})
    if profile:
        extra["profile"] = {f"ours_{arm}": top_ops(trainers[arm].train_step, device)
                            for arm in ("adamw", "muon")}
    shares = {
        arm: [o / s for o, s in zip(opt_s[arm][warmup:], t[arm], strict=True)] for arm in opt_s
    }
    return _summary(shape, cfg, trainers["muon"], t, gemm_rates[warmup:], shares, extra)


def _clocked(trainer: Trainer, clock: StepClock, sink: list[float]) -> Callable[[], None]:
    """``trainer.train_step`` that appends the optimizer's seconds of each call to ``sink``."""

    def run() -> None:
        trainer.train_step()
        sink.append(clock.last)

    return run


def _summary(
    shape: TrainShape,
    cfg: ModelConfig,
    muon_trainer: Trainer,
    t: dict[str, list[float]],
    gemm_rates: list[float],
    shares: dict[str, list[float]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    fpt = cfg.flops_per_token(shape.seq_len)
    step_flops = fpt * shape.batch_tokens
    arms = [n for n in t if n != "gemm"]
    out: dict[str, Any] = {
        "model": cfg.model_dump(mode="json"),
        "active_params": cfg.param_counts().active,
        "batch_tokens": shape.batch_tokens,
        "seq_len": shape.seq_len,
        "flops_per_token": fpt,
        "timings_s": summarise({n: t[n] for n in arms}),
        "gemm_flop_per_s": Summary.of(gemm_rates).to_dict(),
        "tokens_per_s": {n: shape.batch_tokens / Summary.of(t[n]).median for n in arms},
        "model_flop_per_s": {n: step_flops / Summary.of(t[n]).median for n in arms},
        "mfu": {
            n: Summary.of(
                [step_flops / s / g for s, g in zip(t[n], gemm_rates, strict=True)]
            ).to_dict()
            for n in arms
        },
        **extra,
    }
    if "hf_adamw" in t:
        out["ours_over_hf_tokens_per_s"] = Summary.of(
            [h / o for h, o in zip(t["hf_adamw"], t["ours_adamw"], strict=True)]
        ).to_dict()
    peak = device_peak_flops(muon_trainer.device)
    if peak:  # datasheet bf16 peak of a known GPU: the conventional MFU denominator
        out["datasheet_peak_flop_per_s"] = peak
        out["mfu_datasheet"] = {n: step_flops / Summary.of(t[n]).median / peak for n in arms}
    T, m = muon_trainer.trial.optim.ns_steps, cfg.d_model
    out["optimizer_share"] = {k: Summary.of(v).to_dict() for k, v in shares.items() if v}
    out["ns_bound_T_m_over_B"] = T * m / shape.batch_tokens
    out["ns_flops_over_model_flops"] = ns_flops(muon_trainer.model, T) / step_flops
    return out
