"""Case 5: a 4-trial smoke-like sweep on local Ray at concurrency 2: parallel efficiency.

The sweep (the smoke model; 2 expert counts x AdamW/Muon; 1 CPU per trial, ``max_concurrent``
2) runs through :func:`harness.launch.submit` in a child process (``python -m
harness.bench.scheduling``), so Ray never lives in the bench process, with a temporary MLflow
store (``MLFLOW_TRACKING_URI``), storage (``HARNESS_STORAGE``) and data cache
(``HARNESS_CACHE``). The child first times a short in-process trial (threads 1) to size the
trials to about ``target_train_s`` of training each, then starts a fresh local Ray
(``address="local"``, 2 CPUs; timed apart) and times the ``submit`` call.

What is compared (also written to bench.md):

- *train time* of a trial: ``wall_s`` of its ``result.json``, the sum of its optimizer steps'
  durations (forward, backward, step); it excludes worker start, imports, data loading, model
  build, evaluation, logging and checkpoints;
- *wall*: the ``submit`` call with Ray already up: expansion, MLflow set-up, Tune scheduling,
  worker processes, the trials, driver-side logging, teardown;
- parallel efficiency = sum of train times / (2 x wall); Ray's per-trial overhead =
  (2 x wall - sum of train times) / trials, in slot-seconds: the time a slot spends per trial on
  anything but training steps.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.bench.tracking_cost import SMOKE_MODEL

log = logging.getLogger(__name__)

CONCURRENCY = 2


def sweep_spec(steps: int, batch_tokens: int = 2048, seq_len: int = 128) -> dict[str, Any]:
    """The smoke-like sweep: 4 trials, evaluation and checkpoint only at the end."""
    tokens = steps * batch_tokens
    return {
        "name": "bench-scheduling",
        "base": {
            "model": SMOKE_MODEL,
            "optim": {"name": "adamw", "lr": 3e-3},
            "data": {"corpus": "synthetic", "synthetic_vocab": 256, "synthetic_tokens": 300_000,
                     "val_tokens": 8192},
            "train": {"tokens": tokens, "batch_tokens": batch_tokens, "seq_len": seq_len,
                      "log_every": 10, "eval_every": tokens, "checkpoint_every": tokens},
        },
        "grid": {"model.moe.n_routed_experts": [4, 8], "optim.name": ["adamw", "muon"]},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": CONCURRENCY,
        "max_failures": 0,
    }


def efficiency(train_s: list[float], wall_s: float, slots: int = CONCURRENCY) -> dict[str, float]:
    """Parallel efficiency sum(train) / (slots x wall) and per-trial overhead in slot-seconds."""
    if wall_s <= 0 or not train_s:
        raise ValueError("efficiency needs a positive wall and at least one trial")
    busy = slots * wall_s
    return {
        "parallel_efficiency": sum(train_s) / busy,
        "overhead_per_trial_s": (busy - sum(train_s)) / len(train_s),
    }


def _calibrate(target_train_s: float, calib_steps: int) -> int:
    """Steps per trial for ``target_train_s`` of training (threads 1, in this process)."""
    import torch

    from harness.config import TrialConfig
    from harness.tracking import MemoryTracker
    from harness.train import run_trial

    torch.set_num_threads(1)
    base = sweep_spec(calib_steps)["base"]
    base = {**base, "optim": {"name": "muon", "lr": 0.02}}
    result = run_trial(TrialConfig.model_validate(base), MemoryTracker())
    per_step = result.wall_s / max(result.steps, 1)
    return max(10, round(target_train_s / per_step / 10) * 10)


def _trainable_seconds(ray_dir: Path) -> dict[str, float]:
    """Each trial's ``time_total_s`` (its function trainable's run time in the Ray worker),
    keyed by trial hash, from Tune's experiment state; empty when the format is not known."""
    out: dict[str, float] = {}
    for state in ray_dir.glob("*/experiment_state-*.json"):
        try:
            for trial_json, runtime in json.loads(state.read_text())["trial_data"]:
                trial = json.loads(trial_json)
                rt = json.loads(runtime) if isinstance(runtime, str) else runtime
                out[trial["relative_logdir"]] = float(rt["last_result"]["time_total_s"])
        except (KeyError, TypeError, ValueError) as e:
            log.warning("cannot read Tune experiment state %s: %s", state, e)
    return out


def start_local_ray(cpus: int = CONCURRENCY) -> float:
    """Start a fresh local Ray of ``cpus`` CPUs for a bench child; the seconds it took."""
    from harness.launch.ray_setup import ray_env

    ray_env(None)
    import ray

    t0 = time.perf_counter()
    for attempt in range(2):  # a raylet on an overloaded machine may miss Ray's 30 s start limit
        try:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                     logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}})
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    return time.perf_counter() - t0


def bench_child(module: str, spec: dict[str, Any], timeout_s: float, what: str
                ) -> tuple[dict[str, Any], float]:
    """Run ``python -m module spec.json out.json`` in a temporary folder with its own MLflow
    store, storage and data cache (Ray never lives in the bench process); its output and wall."""
    with tempfile.TemporaryDirectory(prefix="harness-bench-ray-") as tmp:
        root = Path(tmp)
        spec_path, out_path = root / "spec.json", root / "out.json"
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
                "HARNESS_STORAGE": str(root / "storage"), "HARNESS_CACHE": str(root / "cache")}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", module, str(spec_path), str(out_path)],
            env=env, cwd=root, capture_output=True, text=True, timeout=timeout_s, check=False,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"{what} child failed (rc {proc.returncode}): " + " | ".join(tail))
        return json.loads(out_path.read_text()), wall


def child(spec_path: Path, out_path: Path) -> None:
    """The child process: calibrate, start Ray, submit, read every trial's result.json."""
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(spec_path.read_text())
    steps = _calibrate(spec["target_train_s"], spec["calib_steps"])
    from harness.config import SweepConfig
    from harness.launch import submit
    from harness.preflight import default_storage

    ray_init_s = start_local_ray()
    import ray

    cpus = ray.cluster_resources().get("CPU")
    sweep = SweepConfig.model_validate(sweep_spec(steps))
    t1 = time.perf_counter()
    summary = submit(sweep)
    wall = time.perf_counter() - t1
    ray.shutdown()
    lifetimes = _trainable_seconds(default_storage() / "ray")
    trials = []
    for path in sorted((default_storage() / "checkpoints").glob("*/result.json")):
        h = path.parent.name
        trials.append({"hash": h, **json.loads(path.read_text())["result"],
                       "trainable_s": lifetimes.get(h)})
    out_path.write_text(json.dumps({
        "steps_per_trial": steps, "ray_init_s": ray_init_s, "ray_cpus": cpus,
        "submit_wall_s": wall, "summary": summary.__dict__, "trials": trials,
    }))


def run_scheduling(
    *, target_train_s: float, calib_steps: int = 20, timeout_s: float = 420
) -> dict[str, Any]:
    """Run the sweep in a child process; return walls, efficiency and per-trial overhead."""
    log.info("scheduling: 4-trial sweep on local Ray, concurrency %d", CONCURRENCY)
    out, child_wall = bench_child(
        "harness.bench.scheduling",
        {"target_train_s": target_train_s, "calib_steps": calib_steps}, timeout_s, "scheduling")
    train = [t["wall_s"] for t in out["trials"]]
    if len(train) != 4 or any(t["status"] != "finished" for t in out["trials"]):
        raise RuntimeError(f"scheduling: expected 4 finished trials, got {out['trials']}")
    lifetimes = [t["trainable_s"] for t in out["trials"] if t.get("trainable_s") is not None]
    breakdown: dict[str, float] = {}
    if len(lifetimes) == len(train):
        slot_s = CONCURRENCY * out["submit_wall_s"] / len(train)
        breakdown = {
            "in_trial_overhead_per_trial_s": (sum(lifetimes) - sum(train)) / len(train),
            "ray_overhead_per_trial_s": slot_s - sum(lifetimes) / len(train),
            "trainable_efficiency": sum(lifetimes) / (CONCURRENCY * out["submit_wall_s"]),
        }
    eff = efficiency(train, out["submit_wall_s"])
    return {
        **out,
        "child_process_wall_s": child_wall,
        "sum_train_s": sum(train),
        **eff,
        **breakdown,
        "train_s_per_trial_for_0.8": 4 * eff["overhead_per_trial_s"],
    }


if __name__ == "__main__":
    child(Path(sys.argv[1]), Path(sys.argv[2]))
