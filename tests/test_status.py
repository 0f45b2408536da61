"""``harness status`` / ``resume`` / ``repair`` (harness.status) over a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import NotFoundError, SweepConfig
from harness.status import repair, status_text, stored_sweep
from harness.store import DERIVED, Store
from harness.tracking import TrialStatus


def make_sweep(project: Path) -> tuple[Store, SweepConfig]:
    sweep = SweepConfig.model_validate({
        "name": "st", "grid": {"model.moe.n_routed_experts": [16, 4, 8]},
        "base": {"data": {"corpus": "synthetic", "synthetic_tokens": 20_000, "val_tokens": 1024},
                 "train": {"tokens": 16384}}})
    store = Store()
    run = store.open_sweep(sweep)
    for trial, status in zip(sweep.expand(), list(TrialStatus)[2:5], strict=True):
        tags = {"mlflow.parentRunId": run.parent_id, "sweep": "st"}
        name = f"E{trial.model.moe.n_routed_experts}"
        tracker = store.open_trial(run.experiment_id, trial.hash, name, tags)
        tracker.log_params(trial.flat())  # as an older harness did: no derived params
        tracker.log_metrics({"train/loss": 2.5, "tokens": 8192.0}, step=1)
        tracker.finish(status)
    return store, sweep


def test_status_tables(project: Path) -> None:
    make_sweep(project)
    table = status_text().splitlines()
    assert table[0].split()[:6] == ["sweep", "trials", "finished", "diverged", "failed", "running"]
    assert table[1].split() == ["st", "3", "1", "1", "1", "0", "running"]
    rows = status_text("st").splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["E4", "E8", "E16"]  # natural order
    assert [r.split()[2] for r in rows] == ["diverged", "failed", "finished"]
    assert rows[0].split()[3:5] == ["8192", "2.5000"]


def test_unknown_sweep_lists_the_known_ones(project: Path) -> None:
    assert status_text() == "no sweeps yet: harness submit sweeps/smoke.yaml"
    make_sweep(project)
    with pytest.raises(NotFoundError, match=r"sweep 'nope' not found in MLflow \(known: st\)"):
        status_text("nope")
    with pytest.raises(NotFoundError):
        stored_sweep("nope")


def test_resume_reads_the_stored_sweep_and_repair_logs_derived_params(project: Path) -> None:
    store, sweep = make_sweep(project)
    assert stored_sweep("st").expand() == sweep.expand()
    assert repair("st") == 2  # the finished and the diverged run; the failed one is rerun
    for run in store.trial_runs("st"):
        done = run.data.tags["status"] in ("finished", "diverged")
        assert all(k in run.data.params for k in (*DERIVED, "data_sha")) == done
    assert repair("st") == 0


def test_trial_table_lists_pending_trials_too(project: Path) -> None:
    store, sweep = make_sweep(project)
    bigger = sweep.model_copy(update={"grid": {"model.moe.n_routed_experts": [16, 4, 8, 32]}})
    store.open_sweep(bigger)  # the sweep record now expands to one trial with no run yet
    rows = status_text("st").splitlines()[1:]
    assert len(rows) == 4
    assert [r.split()[2] for r in rows if r.startswith("E32")] == ["pending"]
