"""A lone GPU box has neither Ray nor MLflow: ``harness train`` and ``harness bench`` still run.

Each test starts a subprocess whose ``PYTHONPATH`` holds stand-in ``ray`` and ``mlflow``
packages that raise ``ModuleNotFoundError`` on import, as on a machine without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from sweeptools import HARNESS, trial_dict

from harness.tracking import TrialStatus, read_jsonl

BLOCKED = ("ray", "mlflow")


def _env(project: Path) -> dict[str, str]:
    """The environment of a child process to which Ray and MLflow are unimportable."""
    shadow = project / "shadow"
    for name in BLOCKED:
        (shadow / name).mkdir(parents=True, exist_ok=True)
        (shadow / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return {**os.environ, "PYTHONPATH": str(shadow)}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


def test_the_stand_ins_block_the_imports(project: Path) -> None:
    out = _run([sys.executable, "-c", "import mlflow"], _env(project))
    assert out.returncode == 1 and "No module named 'mlflow'" in out.stderr
    out = _run([sys.executable, "-c", "import ray"], _env(project))
    assert out.returncode == 1 and "No module named 'ray'" in out.stderr


def test_train_without_ray_or_mlflow_logs_to_jsonl(project: Path) -> None:
    env = _env(project)
    trial = project / "t.yaml"
    trial.write_text(yaml.safe_dump(trial_dict(8)))
    refused = _run([HARNESS, "train", str(trial)], env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        "harness: error: MLflow is not installed; pass --jsonl FILE to log to a JSON-lines file "
        "instead")
    log = project / "runs" / "t.jsonl"
    out = _run([HARNESS, "train", str(trial), "--jsonl", str(log)], env)
    assert out.returncode == 0, out.stderr[-3000:]
    run = read_jsonl(log)
    assert run.status is TrialStatus.FINISHED
    assert [s for s, _ in run.history("train/loss")][-1] == 8
    assert "val/loss" in run.metrics and "test/loss" in run.metrics
    assert run.params["optim.name"] == "adamw" and "trial.yaml" in run.artifacts
    # a rerun finds the trial finished: no step is logged twice, nothing trains again
    lines = len(log.read_text().splitlines())
    again = _run([HARNESS, "train", str(trial), "--jsonl", str(log)], env)
    assert again.returncode == 0, again.stderr[-3000:]
    steps = [line for line in log.read_text().splitlines()[lines:] if '"step"' in line]
    assert steps == []


def test_gpu_check_runs_at_toy_sizes_without_ray_or_mlflow(project: Path) -> None:
    """``make gpu-check``'s script, every step at toy sizes on CPU: the files it writes hold
    each trial's throughput and parity, the packing ratio and the four goals; its ``harness
    bench`` step skips only the cases that need MLflow or Ray."""
    out_dir = project / "gpu"
    out = _run([sys.executable, "-m", "harness.bench.gpu_check", "--tiny", "--out",
                str(out_dir)], _env(project))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((out_dir / "bench.json").read_text())
    assert result["errors"] == [] and result["device"] == "cpu"
    bench = result["bench"]
    assert bench["errors"] == []
    assert bench["cases"]["tracking"] == {"skipped": "mlflow is not installed"}
    for run in bench["cases"]["train_step"]["by_threads"].values():
        assert run["timings_s"] and "error" not in run, run  # the torch cases ran
    assert "mlflow is not installed" in (out_dir / "harness-bench" / "bench.md").read_text()
    assert [g["key"] for g in result["goals"]] == [
        "moe_vs_dense", "mfu_d1024", "packing", "memory_estimate"]
    assert len(result["trials"]) == 2
    for runs in result["trials"].values():
        assert runs["compile_off"]["tokens_per_s"] > 0 and len(runs["compile_off"]["losses"]) == 2
        # on CPU both sides of the parity check are the float32 path: equal to the bit
        assert runs["parity"]["device_losses"] == runs["parity"]["cpu_fp32_losses"]
    assert len(result["packing"]["packed_tokens_per_s"]) == 4 and result["packing"]["ratio"] > 0
    assert "| packing |" in (out_dir / "bench.md").read_text()


def test_gpu_check_times_a_d1024_trial_and_every_trial_fits_an_80gb_gpu() -> None:
    """The MFU goal is set at d_model 1024, which no shipped profile has any more: the check
    widens the optimizers profile's largest trial, with micro-batches small enough to fit."""
    from harness.bench.gpu_check import profile_trials
    from harness.memory import estimate_bytes

    trials = profile_trials(tiny=False)
    wide = trials["optimizers-d1024"]
    assert (wide.model.d_model, wide.model.n_layers, wide.model.attention.n_heads) == (1024, 16, 16)
    assert wide.model.moe is not None and wide.model.moe.expert_ffn_dim == 1024 // 4
    for name, trial in trials.items():
        assert estimate_bytes(trial) < 80e9, name
