"""Drivers and stores under stress: two commands on a fresh store, two submits of one sweep,
SIGTERM, a run deleted mid-sweep, a damaged store, hostile experiment names, stale statuses.

Each case runs the real ``harness`` command against a real local Ray and SQLite store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweeptools import HARNESS, assert_each_step_once, child_runs, harness, histories, write_sweep

from harness.locks import BusyError, exclusive, is_held, sweep_lock_path
from harness.store import Store

FRESH = """
import sys
from harness.store import Store
Store(sys.argv[1]).sweep_names()
"""


def test_commands_on_a_fresh_store_do_not_race_in_its_schema_set_up(tmp_path: Path) -> None:
    """Four processes open the same new SQLite store at once: each waits for the one that
    creates and migrates it (before the fix: alembic errors, a half-migrated store)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", FRESH, uri], stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(errors)[-3000:]
    assert Store(uri).sweep_names() == []


LOCKED = """
import sys, time
from pathlib import Path
from harness.locks import exclusive
with exclusive(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_dies_with_its_holder(tmp_path: Path) -> None:
    """SIGKILL leaves no stale lock: the kernel drops it with the process."""
    path = tmp_path / "locks" / "s.lock"
    proc = subprocess.Popen([sys.executable, "-c", LOCKED, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    assert is_held(path)
    with pytest.raises(BusyError, match=r"^pid \d+ on .* since [\d:]+ holds it$"), exclusive(
            path, "{holder} holds it"):
        pass
    proc.kill()
    proc.wait(timeout=30)
    assert not is_held(path)
    with exclusive(path):
        assert is_held(path)


def _wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_second_submit_of_a_running_sweep_is_refused(project: Path) -> None:
    """Before the fix both drivers dispatched every trial: each trained twice, points were
    stored twice and the shared ``ckpt.pt.tmp`` crashed one trial."""
    path = write_sweep(project, "twice", {"model.moe.n_routed_experts": [4, 8]}, steps=40)
    first = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lock = sweep_lock_path(project / ".harness", "twice")
    _wait_for(lambda: is_held(lock), 120, "the first submit to take the sweep")
    t0 = time.monotonic()
    second = harness("submit", str(path), check=False, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is being run by another submit or resume (pid " in lines[0]
    assert time.monotonic() - t0 < 30
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and "2 finished" in out, out[-2000:]
    runs = child_runs("twice")
    assert len(runs) == 2
    for run in runs:
        assert_each_step_once(histories(run), run.info.run_name)


@pytest.mark.reliability_slow
def test_sigterm_stops_a_sweep_like_ctrl_c(project: Path) -> None:
    """Before the fix: exit 134, a stack dump, a trial run left RUNNING, no resume hint."""
    path = write_sweep(project, "term", {"model.moe.n_routed_experts": [4, 8, 16]}, steps=60)
    proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    results = project / ".harness" / "checkpoints"
    _wait_for(lambda: len(list(results.glob("*/result.json"))) >= 1, 300, "a finished trial")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "harness resume term" in out.splitlines()[-1], out[-3000:]
    states = {r.data.tags["status"] for r in child_runs("term")}
    assert "running" not in states and states <= {"finished", "interrupted"}, states
    assert Store().parent("term").data.tags["status"] == "incomplete"
    resumed = harness("resume", "term")
    assert "0 failed" in resumed.stdout
    assert {r.data.tags["status"] for r in child_runs("term")} == {"finished"}


@pytest.mark.reliability_slow
def test_a_run_deleted_mid_sweep_fails_that_trial_only(project: Path) -> None:
    """Before the fix the whole sweep died after a 60 s stall with 'MLflow unreachable'."""
    path = write_sweep(project, "del", {"model.moe.n_routed_experts": [4, 8]}, steps=200,
                       max_concurrent=1)
    proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def first_run() -> bool:
        try:
            return bool(child_runs("del"))
        except (AssertionError, Exception):
            return False

    _wait_for(first_run, 300, "the first trial's run")
    victim = child_runs("del")[0]
    Store().client.delete_run(victim.info.run_id)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=600)
    assert "its MLflow run was deleted" in out and "MLflow unreachable" not in out, out[-3000:]
    assert "1 finished" in out and "1 failed" in out, out[-3000:]
    assert proc.returncode == 1 and "Traceback" not in out
    assert time.monotonic() - t0 < 300
    (other,) = child_runs("del")  # search leaves the deleted run out
    assert other.data.tags["status"] == "finished"


def test_a_damaged_store_is_one_line(project: Path) -> None:
    (project / "mlflow.db").write_bytes(b"this is not a database" * 100)
    for args in (("status",), ("plots", "--out", str(project / "out"))):
        out = harness(*args, check=False, timeout=120)
        lines = out.stderr.strip().splitlines()
        if args[0] == "plots":  # plotting falls back to the cache, with a warning
            assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
            continue
        assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
        assert "the store is damaged (file is not a database)" in lines[0]


def test_experiment_names_never_become_paths_outside(project: Path) -> None:
    """``../x`` and absolute names wrote 19 files outside the folder before the fix."""
    trial = project / "t.yaml"
    import yaml
    from sweeptools import trial_dict

    trial.write_text(yaml.safe_dump(trial_dict(steps=4)))
    for name in ("../../x", "/tmp/abs-x", ".hidden"):
        out = harness("train", str(trial), "--experiment", name, check=False, timeout=120)
        assert out.returncode == 2 and "experiment (" in out.stderr, out.stderr[-2000:]
        out = harness("plots", "--experiment", name, "--out", "out", check=False)
        assert out.returncode == 2 and "--experiment (" in out.stderr, out.stderr[-2000:]
    store = Store()
    exp = store.client.create_experiment("../x")  # anyone can, on a shared server
    store.client.create_run(exp, tags={"kind": "sweep"})
    out = harness("plots", "--out", "out")
    assert "skipping MLflow experiment '../x'" in out.stderr
    outside = [p for p in project.parent.iterdir() if p.name == "x"]
    assert not outside and not Path("/tmp/abs-x").exists()


def test_status_says_stale_when_the_driver_is_gone(project: Path) -> None:
    path = write_sweep(project, "gone", {"model.moe.n_routed_experts": [4]}, steps=400)
    proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def running() -> bool:
        try:
            return any(r.data.tags.get("status") == "running" for r in child_runs("gone"))
        except (AssertionError, Exception):
            return False

    _wait_for(running, 300, "a running trial")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    text = harness("status", "gone").stdout
    assert " stale " in text and "harness resume gone" in text, text


def test_bad_data_values_stop_at_dry_run(project: Path) -> None:
    """A missing, empty or too-small data.path, val_tokens below seq_len + 1 and a
    resources.cpu finer than Ray schedules passed --dry-run before the fix, then gave a raw
    traceback in `harness train` and 4 Ray attempts per trial in `submit`."""
    import yaml
    from sweeptools import trial_dict

    (project / "empty").mkdir()
    (project / "tiny").mkdir()
    for i in range(8):
        (project / "tiny" / f"{i}.txt").write_text("x" * 40)
    text = {"corpus": "text", "val_tokens": 2048}
    cases = {
        "missing": ({"data": {**text, "path": "nowhere"}}, "data.path (nowhere): not a folder"),
        "empty": ({"data": {**text, "path": "empty"}}, "data.glob ('**/*.txt'): no **/*.txt"),
        "val": ({"data": {"corpus": "synthetic", "val_tokens": 16}},
                "data.val_tokens (16) must be >= train.seq_len + 1 (65)"),
        "cpu": ({"resources": {"cpu": 1e-5}}, "resources.cpu: Input should be greater than"),
    }
    for name, (over, needle) in cases.items():
        raw = trial_dict(steps=4)
        raw["data"] = {**raw["data"], **over.get("data", {})}
        if over.get("data", {}).get("corpus") == "text":
            raw["data"] = over["data"]
        spec = {"name": name, "base": raw, "resources": over.get("resources", {"cpu": 1})}
        path = project / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        out = harness("submit", str(path), "--dry-run", check=False)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and needle in lines[0], (name, out.stderr)
    raw = trial_dict(steps=4)
    raw["data"] = {**text, "path": "tiny"}  # 8 x 40 bytes: val holds < one window of 65
    (project / "t.yaml").write_text(yaml.safe_dump(raw))
    out = harness("train", str(project / "t.yaml"), check=False)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("harness: error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(errors) == 1, errors
    assert "validation stream has 40 tokens, fewer than train.seq_len + 1 (65)" in errors[0]
    assert "a larger data.val_fraction" in errors[0]
    assert not (project / "mlflow.db").exists()
