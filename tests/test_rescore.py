"""`harness rescore`: a finished trial's final weights, scored again, give exactly the losses of
its own final evaluation; a second rescore logs nothing; a trial without final weights is
reported, not a traceback. Real torch training at tiny sizes, real SQLite MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sweeptools import trial_dict

from harness.cli import main
from harness.config import SweepConfig
from harness.preflight import default_storage
from harness.record import FINAL
from harness.rescore import NO_WEIGHTS, rescore_sweep
from harness.store import Store
from harness.train import run_trial

NAME = "resc"


def _finished_sweep() -> tuple[Store, dict[str, str]]:
    """A sweep of two tiny trials trained to the end in this process; {trial hash: run id}."""
    sweep = SweepConfig.model_validate(
        {"name": NAME, "base": trial_dict(steps=8), "grid": {"optim.lr": [3e-3, 1e-2]}})
    store = Store()
    run = store.open_sweep(sweep)
    runs = {}
    for i, trial in enumerate(sweep.expand()):
        tracker = store.open_trial(run.experiment_id, trial.hash, f"lr{i}",
                                   {"sweep": NAME, "mlflow.parentRunId": run.parent_id})
        run_trial(trial, tracker, default_storage() / "checkpoints" / trial.hash)
        runs[trial.hash] = tracker.run_id
    store.close_sweep(run.parent_id, complete=True)
    return store, runs


def _points(store: Store, run_id: str) -> dict[str, dict[int, float]]:
    return store.history(run_id, ["val/loss", "test/loss", "rescore/val/loss",
                                  "rescore/test/loss", "train/loss"])


def test_rescore_reproduces_final_losses_once_and_reports_missing_weights(
    project: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    store, runs = _finished_sweep()
    old, new = sorted(runs)
    (default_storage() / "checkpoints" / old / FINAL).unlink()  # as an older harness left it
    before = {h: _points(store, r) for h, r in runs.items()}

    outcomes = {o.trial_hash: o for o in rescore_sweep(NAME)}
    assert outcomes[old].state == NO_WEIGHTS
    assert outcomes[new].state == "rescored"
    after = _points(store, runs[new])
    last = max(before[new]["val/loss"])
    assert after["rescore/val/loss"] == {last: outcomes[new].val_loss}  # one point, last step
    assert after["rescore/test/loss"] == {last: outcomes[new].test_loss}
    assert math.isclose(outcomes[new].val_loss or 0, before[new]["val/loss"][last],
                        rel_tol=0, abs_tol=1e-6)
    assert math.isclose(outcomes[new].test_loss or 0, before[new]["test/loss"][last],
                        rel_tol=0, abs_tol=1e-6)
    for key in ("val/loss", "test/loss", "train/loss"):
        assert after[key] == before[new][key], key  # nothing rewritten, no step added
    assert _points(store, runs[old]) == before[old]
    run = store.client.get_run(runs[new])
    assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"
    assert run.data.params["rescore.data_sha"] == run.data.params["data_sha"]
    assert run.data.params["rescore.test_sha"] == run.data.params["test_sha"]
    assert len(store.trial_runs(NAME)) == 2  # no new runs

    assert main(["rescore", NAME]) is None  # again, through the CLI: nothing new
    out = capsys.readouterr().out
    assert "already rescored" in out and NO_WEIGHTS in out and "Traceback" not in out
    assert f"{NAME}: 2 finished trials · 0 rescored · 1 already rescored · 1 not rescorable" in out
    assert _points(store, runs[new]) == after
    assert len(store.trial_runs(NAME)) == 2


def test_rescore_of_an_unknown_sweep_is_one_line(
    project: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["rescore", "nosuch"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuch" in err[0], err
    assert not (project / "mlflow.db").exists()
