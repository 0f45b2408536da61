"""MLflow tracker on a real SQLite store: reattach, no duplicate steps, batching, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import ConfigError
from harness.tracking import (
    MLflowTracker,
    check_store,
    find_runs,
    get_or_create_experiment,
    mlflow_client,
)


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    return mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_reattach_keeps_one_run_and_drops_duplicate_points(client) -> None:  # type: ignore[no-untyped-def]
    exp = get_or_create_experiment(client, "sweep-a")
    t1 = MLflowTracker.attach(client, exp, "abc123", "E8-muon-s0", {"sweep": "sweep-a"})
    for step in range(1, 11):
        t1.log_metrics({"train/loss": 5.0 - step * 0.1, "tokens": step * 100.0}, step=step)
    t1.flush()
    # A restarted trial replays steps 6..10 from its checkpoint, then continues to 15.
    t2 = MLflowTracker.attach(client, exp, "abc123", "E8-muon-s0", {"sweep": "sweep-a"})
    assert t2.run_id == t1.run_id
    for step in range(6, 16):
        t2.log_metrics({"train/loss": 5.0 - step * 0.1, "tokens": step * 100.0}, step=step)
    t2.finish("finished")
    assert len(find_runs(client, exp, "tags.trial_hash = 'abc123'")) == 1
    steps = [m.step for m in client.get_metric_history(t1.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 16))
    run = client.get_run(t1.run_id)
    assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"


def test_large_histories_go_out_in_batches(client) -> None:  # type: ignore[no-untyped-def]
    exp = get_or_create_experiment(client, "sweep-b")
    tr = MLflowTracker.attach(client, exp, "h", "r", {})
    for step in range(1, 601):
        tr.log_metrics({"a": float(step), "b": float(-step)}, step=step)
    tr.finish("diverged")
    assert len(client.get_metric_history(tr.run_id, "a")) == 600
    assert client.get_run(tr.run_id).data.tags["status"] == "diverged"


def test_params_are_logged_once_and_artifacts_are_text(client) -> None:  # type: ignore[no-untyped-def]
    exp = get_or_create_experiment(client, "sweep-c")
    tr = MLflowTracker.attach(client, exp, "h", "r", {})
    params = {f"p{i}": i for i in range(150)}
    tr.log_params(params)
    tr.log_params(params)  # a resumed trial logs them again: no error, no change
    tr.log_artifact("trial.yaml", "model: {}\n")
    run = client.get_run(tr.run_id)
    assert len(run.data.params) == 150
    with pytest.raises(ValueError, match="status must be one of"):
        tr.finish("done")


def test_check_store_rejects_unwritable_and_unreachable(tmp_path: Path) -> None:
    check_store(f"sqlite:///{tmp_path / 'ok.db'}")
    with pytest.raises(ConfigError, match="not writable"):
        check_store(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(ConfigError, match="unreachable"):
        check_store("http://127.0.0.1:9")
