"""Multi-worker trials on real local Ray (2 CPUs): Ray Train runs inside Tune trials, gloo.

One sweep mixes a 1-worker and a 2-worker trial of the same tiny MoE under MuonClip. One of the
2-worker trial's workers is SIGKILLed after its first checkpoint; Tune's retry resumes the trial
from that checkpoint (a resumed CPU run is bit-identical to an uninterrupted one, as
tests/test_launch.py checks for one worker). It ends with the 1-worker trial's curve, router
biases and clipped heads (float tolerance 1e-5: the ranks sum their halves of each gradient
before the all-reduce adds them), each MLflow step once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from sweeptools import HARNESS, assert_each_step_once, child_runs, histories, train_workers
from test_distributed import clipping_muon_trial

from harness.config import load_sweep

STEPS = 48


def write(project: Path, name: str, workers: list[int], **extra: Any) -> Path:
    base = clipping_muon_trial(1, STEPS)
    base["train"] |= {"log_every": 4, "checkpoint_every": 2048}
    base["train"].pop("workers")
    spec = {"name": name, "base": base, "grid": {"train.workers": workers},
            "resources": {"cpu": 1}, **extra}
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def router_biases(storage: Path) -> dict[int, torch.Tensor]:
    """Each finished trial's router biases from its final weights, by worker count."""
    out = {}
    for final in storage.glob("checkpoints/*/final.pt"):
        state = torch.load(final, weights_only=False)
        workers = yaml.safe_load(state["trial"])["train"]["workers"]
        biases = [v for k, v in state["model"].items() if k.endswith("e_score_bias")]
        out[workers] = torch.cat(biases)
    return out


def test_mixed_sweep_agrees_and_a_killed_worker_resumes(project: Path) -> None:
    path = write(project, "dp", [1, 2], max_failures=1)
    two_hash = next(t.hash for t in load_sweep(path).expand() if t.train.workers == 2)
    ckpt = project / ".harness" / "checkpoints" / two_hash / "ckpt.pt"
    proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killed, deadline = False, time.monotonic() + 300
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        pids = train_workers(project)
        if ckpt.exists() and len(pids) == 2:
            os.kill(pids[-1], signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:  # stop it like Ctrl-C, so no Ray is left to later tests
        proc.terminate()
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"the sweep did not end in 400 s\n{out[-3000:]}")
    assert killed, f"no train worker to kill\n{out[-2000:]}"
    assert proc.returncode == 0, out[-3000:]
    starts = {int(line.split()[1]) for line in (ckpt.parent / "work.log").read_text().splitlines()}
    assert min(starts) == 0 and max(starts) > 0, f"not resumed from a checkpoint: {starts}"
    runs = {int(r.data.params["train.workers"]): r for r in child_runs("dp")}
    assert set(runs) == {1, 2} and {r.data.tags["status"] for r in runs.values()} == {"finished"}
    one, two = histories(runs[1]), histories(runs[2])
    for hist in (one, two):
        assert_each_step_once(hist, "dp")
    assert [s for s, _ in two["train/loss"]] == list(range(4, STEPS + 1, 4))
    assert sum(v for _, v in one["attn/heads_clipped"]) > 0, "the test needs QK-Clip to act"
    for key in ("train/loss", "val/loss", "test/loss", "moe/bias_range/L1"):
        assert [s for s, _ in two[key]] == [s for s, _ in one[key]], key
        assert [v for _, v in two[key]] == pytest.approx([v for _, v in one[key]], rel=1e-5), key
    for key in ("attn/heads_clipped/L0", "attn/heads_clipped/L1"):
        assert two[key] == one[key], key
    biases = router_biases(project / ".harness")
    torch.testing.assert_close(biases[2], biases[1], rtol=0, atol=1e-6)


def test_a_finished_train_run_waits_until_tune_has_its_last_report(tmp_path: Path) -> None:
    """Ray 2.60's Train-to-Tune hand-over wedges a trial whose Train run returns while its last
    report still waits for a slow Tune (the trial trained to the end, the sweep never returned);
    the trainable waits for the hand-over (``_await_handed_reports``), so both reports arrive."""
    script = Path(__file__).with_name("handover_trial.py")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ray")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its Ray goes with it on a timeout
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the trial wedged\n{out[-1000:]}{err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == [0, 1]
