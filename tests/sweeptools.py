"""Shared pieces of the sweep and reliability tests: tiny sweeps, the CLI, MLflow reads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from harness.store import Store, mlflow_client

HARNESS = str(Path(sys.executable).parent / "harness")

MODEL = {
    "d_model": 32, "n_layers": 2, "first_k_dense": 1, "dense_ffn_dim": 64,
    "attention": {"n_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                  "qk_rope_head_dim": 4, "v_head_dim": 8},
    "moe": {"n_routed_experts": 4, "top_k": 2, "expert_ffn_dim": 16},
}
DATA = {"corpus": "synthetic", "synthetic_vocab": 32, "synthetic_tokens": 100_000,
        "val_tokens": 2048}


def trial_dict(steps: int = 16, **train: Any) -> dict[str, Any]:
    """A tiny TrialConfig as a dict: 512-token steps of a 2-layer d=32 MoE on synthetic data."""
    return {
        "model": MODEL,
        "optim": {"name": "adamw", "lr": 3e-3},
        "data": DATA,
        "train": {"tokens": steps * 512, "batch_tokens": 512, "seq_len": 64, "log_every": 2,
                  "eval_every": 4096, "checkpoint_every": 2048, "threads": 1, **train},
    }


def write_sweep(folder: Path, name: str, grid: dict[str, list[Any]], steps: int = 16,
                train: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A sweep YAML of tiny trials in ``folder``; ``extra`` sets top-level keys."""
    spec = {"name": name, "base": trial_dict(steps, **(train or {})), "grid": grid,
            "resources": {"cpu": 1}, "max_concurrent": 2, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def harness(*args: str, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``harness`` command as a user would; raise with its stderr when it fails."""
    out = subprocess.run([HARNESS, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} -> {out.returncode}\n"
                             f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out


def child_runs(name: str, uri: str | None = None) -> list[Any]:
    """The trial runs (not the sweep's parent run) of experiment ``name``."""
    store = Store(uri)
    assert store.experiment_id(name) is not None, f"no experiment {name}"
    return store.trial_runs(name)


def histories(run: Any, uri: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run as its full (step, value) history, in stored order."""
    client = mlflow_client(uri)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics}


def assert_each_step_once(hist: dict[str, list[tuple[int, float]]], where: str) -> int:
    """No metric has a step twice; returns the number of points."""
    for key, points in hist.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{where}: {key} has duplicate steps {steps}"
    return sum(len(p) for p in hist.values())


def trial_workers(under: Path) -> list[int]:
    """PIDs of Ray Tune trial workers whose working folder is under ``under``: the test's own
    sweep only, never another Ray on the same machine."""
    return ray_processes(under, lambda cmd: "ImplicitFunc" in cmd or "trainable" in cmd)


def train_workers(under: Path) -> list[int]:
    """PIDs of the Ray Train workers of multi-worker trials running in ``under``."""
    return ray_processes(under, lambda cmd: cmd.startswith("ray::RayTrainWorker"))


def ray_processes(under: Path, kind: Callable[[str], bool]) -> list[int]:
    """PIDs of Ray worker processes (``ray::...``) whose command line ``kind`` accepts and
    whose working folder is under ``under``."""
    pids = []
    root = str(under.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cmd.startswith("ray::") and kind(cmd) and (
            cwd == root or cwd.startswith(root + os.sep)
        ):
            pids.append(int(proc.name))
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tmpfs:
    """A small tmpfs mounted at ``path`` (root only); ``Tmpfs.mount`` skips the test without."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def mount(cls, path: Path, size: str, read_only: bool = False) -> Tmpfs:
        import pytest

        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (",ro" if read_only else "")
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
        return cls(path)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
