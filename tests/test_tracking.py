"""MLflow tracker on a real SQLite store: reattach, no duplicate steps, batching, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.store import Store
from harness.tracking import JsonlTracker, TrialStatus, read_jsonl


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_reattach_keeps_one_run_and_drops_duplicate_points(store: Store) -> None:
    client = store.client
    exp = store.ensure_experiment("sweep-a")
    t1 = store.open_trial(exp, "abc123", "E8-muon-s0", {"sweep": "sweep-a"})
    for step in range(1, 11):
        t1.log_metrics({"train/loss": 5.0 - step * 0.1, "tokens": step * 100.0}, step=step)
    t1.flush()
    # A restarted trial replays steps 6..10 from its checkpoint, then continues to 15.
    t2 = store.open_trial(exp, "abc123", "E8-muon-s0", {"sweep": "sweep-a"})
    assert t2.run_id == t1.run_id
    for step in range(6, 16):
        t2.log_metrics({"train/loss": 5.0 - step * 0.1, "tokens": step * 100.0}, step=step)
    t2.finish(TrialStatus.FINISHED)
    assert [r.data.tags["trial_hash"] for r in store.trial_runs("sweep-a")] == ["abc123"]
    steps = [m.step for m in client.get_metric_history(t1.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 16))
    run = client.get_run(t1.run_id)
    assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"


def test_large_histories_go_out_in_batches(store: Store) -> None:
    client = store.client
    exp = store.ensure_experiment("sweep-b")
    tr = store.open_trial(exp, "h", "r", {})
    for step in range(1, 601):
        tr.log_metrics({"a": float(step), "b": float(-step)}, step=step)
    tr.finish(TrialStatus.DIVERGED)
    assert len(client.get_metric_history(tr.run_id, "a")) == 600
    assert client.get_run(tr.run_id).data.tags["status"] == "diverged"


def test_params_are_logged_once_and_artifacts_are_text(store: Store) -> None:
    client = store.client
    exp = store.ensure_experiment("sweep-c")
    tr = store.open_trial(exp, "h", "r", {})
    params = {f"p{i}": i for i in range(150)}
    tr.log_params(params)
    tr.log_params(params)  # a resumed trial logs them again: no error, no change
    tr.log_artifact("trial.yaml", "model: {}\n")
    run = client.get_run(tr.run_id)
    assert len(run.data.params) == 150
    with pytest.raises(ValueError, match="status must be one of"):
        tr.finish("done")  # type: ignore[arg-type]


def test_trial_status_values_and_done() -> None:
    assert [s.value for s in TrialStatus] == [
        "pending", "running", "finished", "diverged", "failed", "interrupted"]
    assert {s for s in TrialStatus if s.done} == {TrialStatus.FINISHED, TrialStatus.DIVERGED}
    assert TrialStatus.parse("finished") is TrialStatus.FINISHED
    assert TrialStatus.parse("?") is None and TrialStatus.parse(None) is None
    assert TrialStatus.INTERRUPTED.mlflow_status == "KILLED"
    assert TrialStatus.RUNNING.mlflow_status is None


def test_jsonl_tracker_keeps_each_point_once_across_reopens(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "t.jsonl"
    first = JsonlTracker(path)
    first.log_params({"lr": 0.1})
    first.log_metrics({"loss": 2.0}, step=1)
    first.log_metrics({"loss": 1.5}, step=2)
    with path.open("a") as f:
        f.write('{"step": 3, "metr')  # a line cut short by a crash
    again = JsonlTracker(path)  # the resumed trial replays steps 1-2, then goes on
    again.log_metrics({"loss": 9.0}, step=2)
    again.log_metrics({"loss": 1.2, "lr": 0.1}, step=3)
    again.set_tags({"status_note": "resumed"})
    again.log_artifact("trial.yaml", "a: 1\n")
    again.finish(TrialStatus.FINISHED)
    run = read_jsonl(path)
    assert run.history("loss") == [(1, 2.0), (2, 1.5), (3, 1.2)]
    assert run.params == {"lr": "0.1"} and run.tags == {"status_note": "resumed"}
    assert run.artifacts == {"trial.yaml": "a: 1\n"} and run.status is TrialStatus.FINISHED
    assert read_jsonl(tmp_path / "missing.jsonl").status is TrialStatus.RUNNING
