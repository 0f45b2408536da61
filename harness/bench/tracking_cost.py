"""Case 4: what MLflow logging costs a trial, against the in-memory tracker.

One small trial (the smoke sweep's model, synthetic corpus, ``log_every`` and ``flush_every`` at
their defaults) runs end to end through :func:`harness.train.run_trial`, alternately with an
:class:`~harness.tracking.MLflowTracker` on a SQLite store in a temporary folder and with a
:class:`~harness.tracking.MemoryTracker`, in rounds of A B / B A. The wall compared is the whole
``run_trial`` call plus, for MLflow, attaching the run (as ``harness train`` does): data from the
cache, model build, training, evaluation, every log call and the final flush. Each MLflow trial
gets a fresh experiment, so no point is deduplicated away. The store's schema is created before
the timed rounds; the step count is calibrated so that one trial takes about ``target_s``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bench.timing import TRIAL_THREADS, Summary, interleaved, summarise, torch_threads
from harness.config import TrialConfig
from harness.store import Store
from harness.tracking import MemoryTracker
from harness.train import run_trial

log = logging.getLogger(__name__)

SMOKE_MODEL: dict[str, Any] = {
    "d_model": 64, "n_layers": 2, "first_k_dense": 1, "dense_ffn_dim": 128,
    "attention": {"kind": "mla", "n_heads": 2, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
                  "qk_rope_head_dim": 8, "v_head_dim": 16},
    "moe": {"n_routed_experts": 8, "top_k": 2, "n_shared": 1, "expert_ffn_dim": 32},
}
"""The model of ``sweeps/smoke.yaml``."""


@dataclass(frozen=True)
class TrackShape:
    """The tracked trial's model (ModelConfig fields), batch and validation set."""

    model: dict[str, Any] = field(default_factory=lambda: SMOKE_MODEL)
    batch_tokens: int = 2048
    seq_len: int = 128
    val_tokens: int = 8192
    min_steps: int = 20
    threads: int = TRIAL_THREADS  # as a sweep trial given 1 CPU runs


def smoke_trial(steps: int, shape: TrackShape, device: str = "cpu") -> TrialConfig:
    """A trial of ``steps`` optimizer steps on the synthetic corpus, defaults elsewhere."""
    vocab = int(shape.model.get("vocab_size", 256))
    return TrialConfig.model_validate({
        "model": shape.model,
        "optim": {"name": "adamw", "lr": 3e-3},
        "data": {"corpus": "synthetic", "synthetic_vocab": min(vocab, 256),
                 "synthetic_tokens": 300_000, "val_tokens": shape.val_tokens},
        "train": {"tokens": steps * shape.batch_tokens, "batch_tokens": shape.batch_tokens,
                  "seq_len": shape.seq_len, "eval_every": 64 * shape.batch_tokens,
                  "device": device, "threads": shape.threads},
    })


def _calibrate(trial: TrialConfig, cache: Path, target_s: float, min_steps: int) -> int:
    """Steps for a ``target_s`` trial (end to end), from a short run that is also the warm-up.

    The short run gives the per-step time (``wall_s`` / steps) and the fixed cost (the rest of
    its end-to-end time: data, model build, evaluation).
    """
    t0 = time.perf_counter()
    result = run_trial(trial, MemoryTracker(), cache_dir=cache)
    fixed = time.perf_counter() - t0 - result.wall_s
    per_step = result.wall_s / max(result.steps, 1)
    log_every = trial.train.log_every
    steps = round(max(target_s - fixed, 0.0) / per_step / log_every) * log_every
    return max(min_steps, steps)


def run_tracking(
    *,
    target_s: float,
    rounds: int,
    device: str = "cpu",
    calib_steps: int = 20,
    shape: TrackShape | None = None,
) -> dict[str, Any]:
    """Alternate MLflow and in-memory trials; return walls and the paired MLflow overhead.

    Rounds stop early (after 2) once they have taken twice the planned ``2 * rounds * target_s``.
    The trials set torch's thread count (``shape.threads``); it is restored afterwards.
    """
    with torch_threads():
        return _run_tracking(target_s, rounds, device, calib_steps, shape or TrackShape())


def _run_tracking(
    target_s: float, rounds: int, device: str, calib_steps: int, shape: TrackShape
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="harness-bench-track-") as tmp:
        root = Path(tmp)
        cache = root / "cache"
        uri = f"sqlite:///{root / 'mlflow.db'}"
        steps = _calibrate(
            smoke_trial(calib_steps, shape, device), cache, target_s, shape.min_steps
        )
        trial = smoke_trial(steps, shape, device)
        store = Store(uri)
        store.ensure_experiment("bench-warmup")
        points: list[int] = []
        flush_every: list[float] = []
        n_runs = 0

        def with_mlflow() -> None:
            nonlocal n_runs
            n_runs += 1
            exp = store.ensure_experiment(f"bench-{n_runs}")
            tracker = store.open_trial(exp, trial.hash, "bench", {"sweep": "bench"})
            flush_every.append(tracker.flush_every)
            run_trial(trial, tracker, cache_dir=cache)

        def in_memory() -> None:
            tracker = MemoryTracker()
            run_trial(trial, tracker, cache_dir=cache)
            points.append(tracker.writes)

        fns: dict[str, Callable[[], object]] = {"mlflow": with_mlflow, "memory": in_memory}
        log.info("tracking: %d-step trials, %d rounds", steps, rounds)
        t0 = time.perf_counter()
        t = interleaved(fns, warmup=0, repeats=rounds, sync=lambda: None,
                        budget_s=4 * rounds * target_s, min_repeats=2)
        wall = time.perf_counter() - t0
    overhead = Summary.of([a / b - 1 for a, b in zip(t["mlflow"], t["memory"], strict=True)])
    return {
        "steps": steps,
        "threads": shape.threads,
        "model": {k: trial.model.model_dump()[k] for k in ("d_model", "n_layers")},
        "batch_tokens": trial.train.batch_tokens,
        "log_every_steps": trial.train.log_every,
        "flush_every_s": flush_every[0] if flush_every else None,
        "metric_points_per_trial": points[0] if points else 0,
        "timings_s": summarise(t),
        "overhead": overhead.to_dict(),
        "overhead_of_medians": Summary.of(t["mlflow"]).median / Summary.of(t["memory"]).median - 1,
        "case_wall_s": wall,
    }
