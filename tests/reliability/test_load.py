"""Load: 8 concurrent trials logging every step for 500 steps into one SQLite store.

The driver is the store's only writer (trials report through Ray Tune), so there is no
"database is locked", and every (metric, step) point arrives exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sweeptools import assert_each_step_once, child_runs, harness, histories, write_sweep

STEPS = 500


@pytest.mark.reliability_slow
@pytest.mark.timeout(1200)
def test_eight_concurrent_trials_logging_every_step(project: Path) -> None:
    tokens_per_step = 4 * 16  # 4 sequences of 16 tokens
    path = write_sweep(
        project, "load", {"model.moe.n_routed_experts": [4, 8], "optim.name": ["adamw", "muon"],
                          "optim.lr": [1e-3, 3e-3]},
        steps=STEPS, resources={"cpu": 0.25}, max_concurrent=8,
        train={"tokens": STEPS * tokens_per_step, "batch_tokens": tokens_per_step,
               "seq_len": 16, "log_every": 1, "eval_every": STEPS * tokens_per_step,
               "checkpoint_every": 100 * tokens_per_step},
    )
    t0 = time.monotonic()
    out = harness("submit", str(path), timeout=1100)
    wall = time.monotonic() - t0
    log = out.stdout + out.stderr
    assert "database is locked" not in log.lower(), log[-3000:]
    assert "8 finished · 0 diverged · 0 failed" in out.stdout, log[-3000:]
    runs = child_runs("load")
    assert len(runs) == 8 and {r.data.tags["status"] for r in runs} == {"finished"}
    points = 0
    for run in runs:
        hist = histories(run)
        points += assert_each_step_once(hist, run.info.run_name)
        for key, series in hist.items():
            # val and test are evaluated at the end only (eval_every is past the budget)
            want = [STEPS] if key in ("val/loss", "test/loss") else list(range(1, STEPS + 1))
            assert sorted(s for s, _ in series) == want, (run.info.run_name, key)
    # runs open at the first report and close at the last: how many were live at once
    edges = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    live = peak = 0
    for _, d in edges:
        live += d
        peak = max(peak, live)
    assert peak >= 6, f"only {peak} trials ran at once"
    print(f"\nload: 8 trials x {STEPS} steps, {peak} at once, logged every step: {points} "
          f"points ({points // 8} per run), 0 lost, 0 duplicated, no 'database is locked'; "
          f"{wall:.0f}s")
