"""``harness bench``: run the five cases, judge the goals, write results/bench.json and bench.md.

Sizes come in three plans: ``full`` (``make bench``, a few minutes on 2 cores), ``quick`` (about
a minute or two: the same shapes, fewer repeats, shorter trials) and ``tiny`` (toy shapes for the
tests, a few seconds, no Ray). On CUDA the reference shapes grow to GPU size and everything runs
under bf16 autocast; scheduling stays a CPU case (it measures Ray, on 2 cores).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from harness.bench.moe_layer import MoEShape, run_moe_layer
from harness.bench.muon_step import run_muon_step
from harness.bench.report import Goal, judge, render
from harness.bench.scheduling import run_scheduling
from harness.bench.timing import load_average, machine
from harness.bench.tracking_cost import TrackShape, run_tracking
from harness.bench.train_step import GPU_MODEL, REFERENCE_MODEL, TrainShape, run_train_step

log = logging.getLogger(__name__)

TINY_MODEL: dict[str, Any] = {
    "d_model": 32, "n_layers": 2, "first_k_dense": 1, "dense_ffn_dim": 48, "vocab_size": 64,
    "attention": {"kind": "mla", "n_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                  "qk_rope_head_dim": 4, "v_head_dim": 8},
    "moe": {"n_routed_experts": 8, "top_k": 2, "n_shared": 1, "expert_ffn_dim": 16},
}


@dataclass(frozen=True)
class Plan:
    """Sizes, repeats and time budgets (seconds of timed rounds) of one bench run."""

    mode: str
    moe: MoEShape = field(default_factory=MoEShape)
    moe_rounds: tuple[int, int] = (2, 15)  # (warm-up, repeats): the case is short and noisy
    moe_budget_s: float = 60.0
    train: TrainShape = field(default_factory=lambda: TrainShape(model=REFERENCE_MODEL))
    train_rounds: tuple[int, int] = (1, 5)
    train_budget_s: float = 90.0
    muon_rounds: tuple[int, int] = (1, 11)
    muon_budget_s: float = 30.0
    track_target_s: float = 20.0
    track_rounds: int = 4
    track_calib_steps: int = 20
    track: TrackShape = field(default_factory=TrackShape)
    sched_target_s: float | None = 40.0  # None: not run
    profile: bool = True


def plan_for(device: torch.device, quick: bool, tiny: bool) -> Plan:
    """The plan of a mode on a device (see the module docstring)."""
    if tiny:
        return Plan(
            mode="tiny",
            moe=MoEShape(tokens=256, d_model=32, expert_ffn=16, n_experts=8, top_k=2),
            moe_rounds=(1, 2), moe_budget_s=5,
            train=TrainShape(model=TINY_MODEL, batch_tokens=256, seq_len=64, gemm_n=128),
            train_rounds=(1, 2), train_budget_s=5, muon_rounds=(1, 2), muon_budget_s=5,
            track_target_s=0.3, track_rounds=1, track_calib_steps=4, sched_target_s=None,
            track=TrackShape(model=TINY_MODEL, batch_tokens=256, seq_len=64, val_tokens=512,
                             min_steps=10),
            profile=True,
        )
    plan = Plan(mode="full")
    if device.type == "cuda":
        plan = replace(
            plan,
            moe=MoEShape(tokens=65536, d_model=768, expert_ffn=384),
            train=TrainShape(model=GPU_MODEL, batch_tokens=65536, seq_len=1024, gemm_n=8192),
            moe_rounds=(2, 10), train_rounds=(2, 10),
        )
    if quick:
        plan = replace(
            plan, mode="quick", moe_rounds=(1, 3), moe_budget_s=20,
            train=replace(plan.train, batch_tokens=plan.train.batch_tokens // 2),
            train_rounds=(1, 2), train_budget_s=20, muon_rounds=(1, 3), muon_budget_s=10,
            track_target_s=5.0, track_rounds=2, sched_target_s=6.0, profile=False,
        )
    return plan


def _goals(device: torch.device, cases: dict[str, Any]) -> list[Goal]:
    """Every goal of the issue, judged on the cases' figures (None where a case did not run)."""
    cuda = device.type == "cuda"

    def get(case: str, *path: str) -> float | None:
        node: Any = cases.get(case)
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) else None

    best_hf = (cases.get("moe_layer") or {}).get("best_hf")
    mfu_name = f"{'bf16' if cuda else 'CPU'} MFU, AdamW step"
    mfu = get("train_step", "mfu", "ours_adamw", "median")
    if cuda and get("train_step", "mfu_datasheet", "ours_adamw") is not None:
        mfu_name += " (over the datasheet bf16 peak)"
        mfu = get("train_step", "mfu_datasheet", "ours_adamw")
    return [
        judge("moe_vs_hf", "moe_layer", "MoE layer: t(fastest HF DeepseekV3MoE) / t(ours)",
              get("moe_layer", "ratios", f"{best_hf}_over_ours", "median"), ">=", 1.5),
        judge("moe_overhead", "moe_layer", "MoE overhead: t(MoE) / t(dense, same active FLOPs)",
              get("moe_layer", "ratios", "ours_over_dense", "median"), "<=", 1.3 if cuda else 1.6),
        judge("mfu", "train_step", mfu_name, mfu, ">=", 0.35 if cuda else 0.30),
        judge("train_vs_hf", "train_step", "train step: tokens/s ours / HF DeepseekV3ForCausalLM",
              get("train_step", "ours_over_hf_tokens_per_s", "median"), ">=", 1.3),
        judge("muon_vs_torch", "muon", "Muon step: t(torch.optim.Muon) / t(ours), both bf16 NS",
              get("muon", "ratios", "torch_over_ours_bf16", "median"), ">=", 3.0),
        judge("tracking_overhead", "tracking", "MLflow overhead over the in-memory tracker",
              get("tracking", "overhead", "median"), "<=", 0.02),
        judge("sched_efficiency", "scheduling", "Ray parallel efficiency, 4 trials, 2 at once",
              get("scheduling", "parallel_efficiency"), ">=", 0.8),
    ]


def _case(name: str, fn: Callable[[], dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    """Run one case; a failure is recorded (and logged), never raised: the others still run."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:
        log.exception("bench case %s failed", name)
        errors.append(f"{name}: {type(e).__name__}: {e}")
        out = {"error": f"{type(e).__name__}: {e}"}
    out["case_seconds"] = time.perf_counter() - t0
    out["load_average_after"] = load_average()
    log.info("bench case %s: %.1fs", name, out["case_seconds"])
    return out


def run_bench(
    device: str = "cpu",
    quick: bool = False,
    out_dir: Path = Path("results"),
    *,
    tiny: bool = False,
    threads: int | None = None,
    scheduling: bool = True,
) -> dict[str, Any]:
    """Run every case, write ``out_dir/bench.json`` and ``out_dir/bench.md``, return the dict.

    ``device`` "cpu" or "cuda" (RuntimeError with one line when CUDA is absent); ``quick`` the
    short plan; ``tiny`` toy sizes for tests; ``threads`` torch CPU threads (None: all cores);
    ``scheduling`` False skips the Ray case (reported as not run). A failing case is recorded in
    ``errors`` and its goals as not measured; the others still run.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("harness bench --device cuda: no CUDA device is visible")
    dev = torch.device(device)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    plan = plan_for(dev, quick, tiny)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    info = machine(dev)
    log.info("bench (%s) on %s, %d threads", plan.mode, info["cpu_model"], info["torch_threads"])
    errors: list[str] = []
    cases: dict[str, Any] = {}
    cases["moe_layer"] = _case("moe_layer", lambda: run_moe_layer(
        plan.moe, dev, warmup=plan.moe_rounds[0], repeats=plan.moe_rounds[1],
        budget_s=plan.moe_budget_s, profile=plan.profile), errors)
    ran = [k.removeprefix("hf_") for k in cases["moe_layer"].get("timings_s", {})
           if k.startswith("hf_")]  # HF experts paths that fit in memory at this shape
    cases["train_step"] = _case("train_step", lambda: run_train_step(
        plan.train, dev, warmup=plan.train_rounds[0], repeats=plan.train_rounds[1],
        budget_s=plan.train_budget_s, hf_experts_impls=tuple(ran or ["grouped_mm"]),
        profile=plan.profile), errors)
    cases["muon"] = _case("muon", lambda: run_muon_step(
        plan.train.model_config(), dev, warmup=plan.muon_rounds[0], repeats=plan.muon_rounds[1],
        budget_s=plan.muon_budget_s), errors)
    cases["tracking"] = _case("tracking", lambda: run_tracking(
        target_s=plan.track_target_s, rounds=plan.track_rounds, device=device,
        calib_steps=plan.track_calib_steps, shape=plan.track), errors)
    if scheduling and plan.sched_target_s is not None:
        target = plan.sched_target_s
        cases["scheduling"] = _case(
            "scheduling", lambda: run_scheduling(target_train_s=target), errors)
    else:
        cases["scheduling"] = {"skipped": "not run in this mode"}
    goals = _goals(dev, cases)
    info["load_average_end"] = load_average()
    result = {
        "meta": {"mode": plan.mode, "started": started, "wall_s": time.perf_counter() - t0,
                 "plan": asdict(plan), "machine": info},
        "goals": [asdict(g) for g in goals],
        "cases": cases,
        "errors": errors,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out_dir / "bench.md").write_text(render(result))
    log.info("bench: wrote %s and %s in %.0fs", out_dir / "bench.json", out_dir / "bench.md",
             result["meta"]["wall_s"])
    return result
