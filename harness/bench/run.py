"""``harness bench``: run the seven cases, judge the goals, write results/bench.json and bench.md.

Sizes come in three plans: ``full`` (``make bench``, about 25 minutes on 2 cores, 17 of them
the prefix-sharing case), ``quick`` (a few minutes: the same shapes with the train step at half
its batch, fewer repeats, shorter trials, no prefix-sharing case) and ``tiny`` (toy shapes
for the tests, a few seconds, no Ray). On CUDA the reference shapes grow to GPU size and
everything runs under bf16 autocast; scheduling stays a CPU case (it measures Ray, on 2 cores).

On CPU the MoE-layer and train-step cases run once per thread count of the plan: 1 thread, what
a sweep trial with ``resources.cpu: 1`` gets, and all cores. Each run alternates its variants
round by round in one process as always, so every ratio compares arms at the same thread count;
their goals are judged per thread count. What the cases measure and why goals are missed:
``docs/bench.md``.
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

from harness.bench.data_parallel import run_data_parallel
from harness.bench.hf import EXPERT_IMPLS
from harness.bench.moe_layer import MoEShape, run_moe_layer
from harness.bench.muon_step import run_muon_step
from harness.bench.prefix_sharing import run_prefix_sharing
from harness.bench.report import GOAL_KEYS, Goal, judge, render, runs_of
from harness.bench.scheduling import run_scheduling
from harness.bench.timing import (
    all_cores,
    cpu_thread_counts,
    load_average,
    machine,
    torch_threads,
)
from harness.bench.tracking_cost import TrackShape, run_tracking
from harness.bench.train_step import GPU_MODEL, REFERENCE_MODEL, TrainShape, run_train_step
from harness.env import importable

log = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bench.md"
"""What each case measures, the goals and the analysis of their misses (linked from bench.md)."""

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
    prefix_scale: float | None = 1 / 16  # sweeps/sparsity.yaml's budgets x this; None: not run
    profile: bool = True
    threads: tuple[int, ...] = (1,)  # torch threads of the MoE-layer and train-step runs
    dp_rounds: tuple[int, int] = (2, 6)  # data-parallel case: (warm-up, timed) steps per run


def plan_for(device: torch.device, quick: bool, tiny: bool, threads: int = 1) -> Plan:
    """The plan of a mode on a device, ``threads`` the most torch threads (see the docstring).

    Budgets and rounds are per thread count.
    """
    counts = cpu_thread_counts(device, threads)
    if tiny:
        return Plan(
            mode="tiny", threads=counts,
            moe=MoEShape(tokens=256, d_model=32, expert_ffn=16, n_experts=8, top_k=2),
            moe_rounds=(1, 2), moe_budget_s=5,
            train=TrainShape(model=TINY_MODEL, batch_tokens=256, seq_len=64, gemm_n=128),
            train_rounds=(1, 2), train_budget_s=5, muon_rounds=(1, 2), muon_budget_s=5,
            track_target_s=0.3, track_rounds=1, track_calib_steps=4, sched_target_s=None,
            prefix_scale=None, dp_rounds=(1, 2),
            track=TrackShape(model=TINY_MODEL, batch_tokens=256, seq_len=64, val_tokens=512,
                             min_steps=10),
            profile=True,
        )
    plan = Plan(mode="full", threads=counts)
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
            track_target_s=5.0, track_rounds=2, sched_target_s=6.0, prefix_scale=None,
            profile=False, dp_rounds=(1, 3),
        )
    return plan


def _get(node: Any, *path: str) -> float | None:
    """The number at ``path`` in nested dicts, None where any step is missing."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _moe_goals(c: dict[str, Any], threads: int | None, cuda: bool) -> list[Goal]:
    """The MoE-layer goals of one run of case 1 (at ``threads``)."""
    best_hf = c.get("best_hf")
    return [
        judge("moe_vs_hf", "moe_layer", "MoE layer: t(fastest HF DeepseekV3MoE) / t(ours)",
              _get(c, "ratios", f"{best_hf}_over_ours", "median"), ">=", 1.5, threads),
        judge("moe_overhead", "moe_layer", "MoE overhead: t(MoE) / t(dense, same active FLOPs)",
              _get(c, "ratios", "ours_over_dense", "median"), "<=", 1.3 if cuda else 1.6,
              threads),
    ]


def _train_goals(c: dict[str, Any], threads: int | None, cuda: bool) -> list[Goal]:
    """The train-step goals of one run of case 2 (at ``threads``)."""
    mfu_name = f"{'bf16' if cuda else 'CPU'} MFU, AdamW step"
    mfu = _get(c, "mfu", "ours_adamw", "median")
    if cuda and _get(c, "mfu_datasheet", "ours_adamw") is not None:
        mfu_name += " (over the datasheet bf16 peak)"
        mfu = _get(c, "mfu_datasheet", "ours_adamw")
    return [
        judge("mfu", "train_step", mfu_name, mfu, ">=", 0.35 if cuda else 0.30, threads),
        judge("train_vs_hf", "train_step", "train step: tokens/s ours / HF DeepseekV3ForCausalLM",
              _get(c, "ours_over_hf_tokens_per_s", "median"), ">=", 1.3, threads),
    ]


def _goals(device: torch.device, cases: dict[str, Any], threads: int) -> list[Goal]:
    """Every goal, judged on the cases' figures (None where a case did not run): the MoE-layer
    and train-step goals once per thread count, the Muon goal at ``threads``, tracking at its
    trial's threads."""
    cuda = device.type == "cuda"
    track = cases.get("tracking") or {}
    goals = [
        *(g for n, c in runs_of(cases.get("moe_layer")) for g in _moe_goals(c, n, cuda)),
        *(g for n, c in runs_of(cases.get("train_step")) for g in _train_goals(c, n, cuda)),
        judge("muon_vs_torch", "muon", "Muon step: t(torch.optim.Muon) / t(ours), both bf16 NS",
              _get(cases.get("muon"), "ratios", "torch_over_ours_bf16", "median"), ">=", 3.0,
              threads),
        judge("tracking_overhead", "tracking", "MLflow overhead over the in-memory tracker",
              _get(track, "overhead", "median"), "<=", 0.02, track.get("threads")),
        judge("sched_efficiency", "scheduling", "Ray parallel efficiency, 4 trials, 2 at once",
              _get(cases.get("scheduling"), "parallel_efficiency"), ">=", 0.8),
        judge("prefix_tokens", "prefix", "sparsity.yaml: tokens trained, shared / unshared",
              _get(cases.get("prefix"), "tokens_ratio"), "<=", 0.65),
        judge("prefix_wall", "prefix", "sparsity.yaml: sweep wall on local Ray, shared / "
              "unshared", _get(cases.get("prefix"), "wall_ratio"), "<=", 0.7),
        judge("dp_step", "data_parallel", "train step, 2 gloo workers / 1 worker at equal "
              "global batch (1 thread each)", _get(cases.get("data_parallel"), "step_ratio"),
              "<=", 0.75, 1),
        judge("dp_ns_split", "data_parallel", "Newton-Schulz time per step, split across 2 "
              "workers / repeated on each", _get(cases.get("data_parallel"),
                                                "ns_split_over_repeated"), "<=", 0.75, 1),
    ]
    return sorted(goals, key=lambda g: GOAL_KEYS.index(g.key))  # stable: thread order kept


def run_case(name: str, fn: Callable[[], dict[str, Any]], errors: list[str], *,
             needs: str | None = None, run: bool = True) -> dict[str, Any]:
    """Run one case; a failure is recorded (and logged), never raised: the others still run.

    ``run`` False (not in this mode) or a ``needs`` package that is not installed (Ray, MLflow
    on a lone GPU box) skips it, saying why."""
    if not run:
        return {"skipped": "not run in this mode"}
    if needs is not None and not importable(needs):
        log.info("bench case %s skipped: %s is not installed", name, needs)
        return {"skipped": f"{needs} is not installed"}
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


def _threaded(
    name: str, fn: Callable[[], dict[str, Any]], counts: tuple[int, ...], errors: list[str]
) -> dict[str, Any]:
    """Run a case once at each torch thread count, in turn; a failing run leaves the others.

    Returns ``{"threads": [...], "by_threads": {"<n>": {"threads": n, **result}}}``.
    """
    runs: dict[str, Any] = {}
    for n in counts:
        with torch_threads(n):
            runs[str(n)] = {"threads": n, **run_case(f"{name} at {n} threads", fn, errors)}
    return {"threads": list(counts), "by_threads": runs}


def _hf_impls_run(moe: dict[str, Any]) -> tuple[str, ...]:
    """HF experts paths the MoE case ran (those that fit in memory at its shape), in order."""
    ran = {k.removeprefix("hf_") for _, c in runs_of(moe) for k in c.get("timings_s", {})
           if k.startswith("hf_")}
    return tuple(impl for impl in EXPERT_IMPLS if impl in ran) or ("grouped_mm",)


def _run_cases(
    plan: Plan, dev: torch.device, scheduling: bool, errors: list[str]
) -> dict[str, Any]:
    """Every case of ``plan``, in order; cases 1 and 2 once per thread count of the plan."""
    cases: dict[str, Any] = {}
    cases["moe_layer"] = _threaded("moe_layer", lambda: run_moe_layer(
        plan.moe, dev, warmup=plan.moe_rounds[0], repeats=plan.moe_rounds[1],
        budget_s=plan.moe_budget_s, profile=plan.profile), plan.threads, errors)
    hf_impls = _hf_impls_run(cases["moe_layer"])
    cases["train_step"] = _threaded("train_step", lambda: run_train_step(
        plan.train, dev, warmup=plan.train_rounds[0], repeats=plan.train_rounds[1],
        budget_s=plan.train_budget_s, hf_experts_impls=hf_impls, profile=plan.profile),
        plan.threads, errors)
    cases["muon"] = run_case("muon", lambda: run_muon_step(
        plan.train.model_config(), dev, warmup=plan.muon_rounds[0], repeats=plan.muon_rounds[1],
        budget_s=plan.muon_budget_s), errors)
    cases["tracking"] = run_case("tracking", lambda: run_tracking(
        target_s=plan.track_target_s, rounds=plan.track_rounds, device=dev.type,
        calib_steps=plan.track_calib_steps, shape=plan.track), errors, needs="mlflow")
    target, scale = plan.sched_target_s, plan.prefix_scale
    cases["scheduling"] = run_case(
        "scheduling", lambda: run_scheduling(target_train_s=target or 0.0), errors,
        needs="ray", run=scheduling and target is not None)
    cases["prefix"] = run_case("prefix", lambda: run_prefix_sharing(scale=scale or 1.0),
                               errors, needs="ray", run=scheduling and scale is not None)
    cases["data_parallel"] = run_case("data_parallel", lambda: run_data_parallel(
        plan.train, warmup=plan.dp_rounds[0], steps=plan.dp_rounds[1]), errors,
        run=dev.type == "cpu")
    return cases


def _measure(plan: Plan, dev: torch.device, threads: int, scheduling: bool) -> dict[str, Any]:
    """Run the cases of ``plan`` with ``threads`` torch threads; the result dict of the run."""
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    info = machine(dev)
    log.info("bench (%s) on %s, %d threads (cases 1-2 at %s)", plan.mode, info["cpu_model"],
             threads, plan.threads)
    errors: list[str] = []
    cases = _run_cases(plan, dev, scheduling, errors)
    goals = _goals(dev, cases, threads)
    info["load_average_end"] = load_average()
    return {
        "meta": {"mode": plan.mode, "started": started, "wall_s": time.perf_counter() - t0,
                 "plan": asdict(plan), "machine": info},
        "goals": [asdict(g) for g in goals],
        "cases": cases,
        "errors": errors,
    }


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
    short plan; ``tiny`` toy sizes for tests; ``threads`` torch CPU threads (None: all cores),
    on CPU the MoE-layer and train-step cases also run at a sweep trial's 1 thread;
    ``scheduling`` False skips the Ray case (reported as not run). A failing case is recorded in
    ``errors`` and its goals as not measured; the others still run.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("harness bench --device cuda: no CUDA device is visible")
    dev = torch.device(device)
    threads = threads or all_cores()
    plan = plan_for(dev, quick, tiny, threads)
    with torch_threads(threads):
        result = _measure(plan, dev, threads, scheduling)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out_dir / "bench.md").write_text(render(result, os.path.relpath(DOCS, out_dir.resolve())))
    log.info("bench: wrote %s and %s in %.0fs", out_dir / "bench.json", out_dir / "bench.md",
             result["meta"]["wall_s"])
    return result
