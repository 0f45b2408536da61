"""The MLflow layout (harness.store) on a real SQLite store: parent runs, the sweep record, trial
runs by hash, finished trials, what a trial logs and how it reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import ConfigError, NotFoundError, SweepConfig, TrialConfig
from harness.store import DERIVED, Store, check_store, decode_param, trial_params
from harness.tracking import TrialStatus


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def sweep(name: str = "s", description: str = "first") -> SweepConfig:
    return SweepConfig.model_validate({
        "name": name, "description": description,
        "grid": {"optim.name": ["adamw", "muon"]}, "base": {"train": {"tokens": 16384}}})


def test_open_sweep_reattaches_and_rewrites_the_record(store: Store) -> None:
    first = store.open_sweep(sweep())
    again = store.open_sweep(sweep(description="second"))
    assert again == first
    assert store.sweep_names() == ["s"]
    record = json.loads(store.read_sweep_record("s") or "")
    assert record["description"] == "second"
    assert store.stored_sweep("s").expand() == sweep().expand()
    assert store.parent("s").data.tags["status"] == "running"
    store.close_sweep(first.parent_id, complete=True)
    parent = store.parent("s")
    assert parent.data.tags["status"] == "finished" and parent.info.status == "FINISHED"


def test_unknown_sweeps_are_not_found(store: Store) -> None:
    assert store.read_sweep_record("nope") is None and store.parent("nope") is None
    with pytest.raises(NotFoundError, match="submit it first"):
        store.stored_sweep("nope")
    with pytest.raises(NotFoundError, match="no MLflow experiment named 'nope'"):
        store.trial_runs("nope")
    assert store.finished("nope") == {}


def test_trial_runs_and_finished_by_hash(store: Store) -> None:
    run = store.open_sweep(sweep())
    statuses = [TrialStatus.FINISHED, TrialStatus.FAILED]
    for trial, status in zip(sweep().expand(), statuses, strict=True):
        tags = {"mlflow.parentRunId": run.parent_id, "sweep": "s"}
        store.open_trial(run.experiment_id, trial.hash, trial.optim.arm, tags).finish(status)
    runs = store.trial_runs("s")
    assert sorted(r.info.run_name for r in runs) == ["adamw", "muon"]  # the parent is not one
    done = store.finished("s")
    assert list(done) == [sweep().expand()[0].hash]
    assert done[sweep().expand()[0].hash].data.tags["status"] == "finished"


def test_trial_params_hold_the_config_and_derived_values_once() -> None:
    trial = TrialConfig()
    params = trial_params(trial, {"files": 3})
    assert set(params) == {*trial.flat(), *DERIVED, "data_sha"}
    pc = trial.model.param_counts()
    assert params["params_active"] == pc.active and params["params_total"] == pc.total
    assert params["sparsity"] == trial.model.sparsity and params["arm"] == "adamw"
    assert params["data_sha"] != trial_params(trial, {"files": 4})["data_sha"]
    assert "data_sha" not in trial_params(trial, None)


def test_logged_params_read_back_as_logged(store: Store) -> None:
    trial = TrialConfig()
    exp = store.ensure_experiment("p")
    tracker = store.open_trial(exp, trial.hash, "r", {})
    tracker.log_params(trial_params(trial, None))
    (run,) = store.trial_runs("p")
    back = {k: decode_param(v) for k, v in run.data.params.items()}
    expected = json.loads(json.dumps(trial_params(trial, None)))  # tuples come back as lists
    assert back == expected


def test_decode_param() -> None:
    assert decode_param("64") == 64 and decode_param("0.02") == 0.02
    assert decode_param("None") is None and decode_param("True") is True
    assert decode_param("[0.9, 0.95]") == [0.9, 0.95] and decode_param("mla") == "mla"


def test_check_store_rejects_unwritable_and_unreachable(tmp_path: Path) -> None:
    check_store(f"sqlite:///{tmp_path / 'ok.db'}")
    with pytest.raises(ConfigError, match="not writable"):
        check_store(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(ConfigError, match="unreachable"):
        check_store("http://127.0.0.1:9")
