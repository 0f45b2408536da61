"""Prefix sharing in real sweeps: local Ray, SQLite MLflow, the CLI in a subprocess.

Each branch's MLflow curve must equal the same trial trained alone in this process, bit for bit;
a SIGKILLed trunk resumes without training a checkpointed step twice; a budget added later
trains only what is new.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from sweeptools import HARNESS, child_runs, harness, histories, trial_workers, write_sweep

from harness.config import TrialConfig, load_sweep
from harness.prefix import PrefixStore, lineage_key
from harness.record import steps_trained
from harness.schedule import decay_start
from harness.tracking import MemoryTracker
from harness.train import run_trial

SHARED = {"warmup_steps": 2, "decay_frac": 0.25}
STEP = 512  # tokens per step of the tiny trials


def budgets_yaml(project: Path, name: str, steps: list[int], **train: Any) -> Path:
    return write_sweep(project, name, {"train.tokens": [s * STEP for s in steps]},
                       train={**SHARED, **train}, max_failures=3)


def alone(trial: TrialConfig, project: Path) -> dict[str, list[tuple[int, float]]]:
    """The trial trained alone, in this process: every metric but the timings."""
    tracker = MemoryTracker()
    run_trial(trial, tracker, None, cache_dir=project / "cache")
    return {k: sorted(v.items()) for k, v in tracker.metrics.items()
            if not k.startswith("perf/")}


def stored(run: Any) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted(v) for k, v in histories(run).items() if not k.startswith("perf/")}


def by_steps(name: str) -> dict[int, Any]:
    return {int(r.data.params["train.tokens"]) // STEP: r for r in child_runs(name)}


def assert_equal_alone(path: Path, project: Path) -> None:
    runs = by_steps(load_sweep(path).name)
    for t in load_sweep(path).expand():
        run = runs[t.train.steps]
        assert run.data.tags["status"] == "finished"
        assert stored(run) == alone(t, project), f"{t.train.steps} steps: curve differs"


def ckpt(project: Path, trial: TrialConfig) -> Path:
    return project / ".harness" / "checkpoints" / trial.hash


def test_budgets_share_a_trunk_equal_their_solo_runs_and_extend(project: Path) -> None:
    path = budgets_yaml(project, "ladder", [16, 24, 40])
    dry = harness("submit", str(path), "--dry-run").stdout
    assert dry.count("branch of #2") == 2 and "trunk" in dry, dry
    assert "1 trunk, 2 branches" in dry and "(0.62x" in dry, dry
    out = harness("submit", str(path)).stdout
    assert "3 finished" in out and "(0.62x: shared prefixes" in out, out
    runs = by_steps("ladder")
    trunk = runs[40]
    assert trunk.data.tags["lineage.role"] == "trunk"
    for steps, start in ((16, 12), (24, 18)):
        tags = runs[steps].data.tags
        assert tags["lineage.role"] == "branch"
        assert tags["lineage.trunk"] == trunk.info.run_name
        assert tags["lineage.branch_tokens"] == str(start * STEP)
        assert tags["work.tokens_trained"] == str((steps - start) * STEP)
    assert_equal_alone(path, project)

    longer = budgets_yaml(project, "ladder", [16, 24, 40, 64])
    dry = harness("submit", str(longer), "--dry-run").stdout
    assert "alone, extends at 15.4k" in dry.splitlines()[4], dry
    out = harness("submit", str(longer)).stdout
    assert "3 already done · 1 finished" in out, out
    new = by_steps("ladder")[64]
    assert new.data.tags["lineage.branch_tokens"] == str(30 * STEP)  # the old trunk's last
    assert new.data.tags["work.tokens_trained"] == str((64 - 30) * STEP)  # stable checkpoint
    assert stored(new) == alone(load_sweep(longer).expand()[-1], project)

    cosine = budgets_yaml(project, "cos", [16, 24, 40], schedule="cosine")
    dry = harness("submit", str(cosine), "--dry-run").stdout
    assert "prefix sharing: none" in dry and "branch of" not in dry, dry
    assert "3 trials do not share: schedule cosine" in dry, dry


def test_sigkilled_trunk_resumes_and_trains_no_checkpointed_step_twice(project: Path) -> None:
    steps = [16, 24, 120]
    path = budgets_yaml(project, "killtrunk", steps, checkpoint_every=STEP)
    trials = load_sweep(path).expand()
    trunk = trials[-1]
    first_branch = PrefixStore(project / ".harness").path(lineage_key(trunk), 12)
    proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killed, deadline = 0, time.monotonic() + 240
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        if first_branch.exists() and steps_trained(ckpt(project, trunk)) >= 30:
            for pid in trial_workers(project):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=300)
    assert killed, f"no trial worker to kill\n{out[-2000:]}"
    assert proc.returncode == 0, out[-3000:]
    assert_equal_alone(path, project)
    shared = trunk.train.steps + sum(t.train.steps - decay_start(t.train) for t in trials[:-1])
    trained = sum(steps_trained(ckpt(project, t)) for t in trials)
    # a kill between a checkpoint and its work-log line leaves that step uncounted (one per
    # killed worker); a trunk or branch restarted from step 0 would add 30 or more
    assert shared - killed <= trained <= shared, (trained, shared, killed)
