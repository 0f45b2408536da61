"""Sweeps on real local Ray, tracked in a real SQLite MLflow store, driven through the CLI.

Each test runs ``harness`` in a subprocess inside a temporary project folder, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sweeptools import HARNESS, child_runs, free_port, harness, trial_workers, write_sweep

from harness.config import load_sweep
from harness.store import Store, mlflow_client
from harness.tracking import MemoryTracker
from harness.train import run_trial


def sweep_yaml(folder: Path, name: str, grid: dict, steps: int = 16, **extra: object) -> Path:
    """Tiny trials that diverge (rather than crawl) at an absurd learning rate."""
    return write_sweep(folder, name, grid, steps, train={"diverge_loss": 6.0, "grad_clip": None},
                       **extra)


def steps_of(run_id: str, key: str = "train/loss") -> list[int]:
    return [m.step for m in mlflow_client().get_metric_history(run_id, key)]


def test_sweep_dedup_divergence_and_new_grid_values(project: Path) -> None:
    path = sweep_yaml(project, "s4", {"model.moe.n_routed_experts": [4, 8],
                                      "optim.lr": [3e-3, 50.0]})
    out = harness("submit", str(path))
    assert "2 finished · 2 diverged · 0 failed" in out.stdout, out.stdout
    runs = child_runs("s4")
    assert len(runs) == 4
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    by_status = sorted(r.data.tags["status"] for r in runs)
    assert by_status == ["diverged", "diverged", "finished", "finished"]
    for r in runs:
        if r.data.tags["status"] == "finished":
            assert steps_of(r.info.run_id) == list(range(2, 17, 2))
            assert "val/loss" in r.data.metrics and r.data.params["model.d_model"] == "32"

    assert sweep_status("s4") == ("finished", "FINISHED")
    again = harness("submit", str(path))
    assert "4 already done" in again.stdout and "0 finished" in again.stdout
    assert len(child_runs("s4")) == 4
    # a submit that only skips finished trials leaves the sweep finished (it was tagged
    # incomplete and ended KILLED)
    assert sweep_status("s4") == ("finished", "FINISHED")
    dry = harness("submit", str(bigger_yaml(project)), "--dry-run").stdout
    assert dry.count(" finished") == 2 and dry.count(" diverged") == 2, dry
    assert dry.count(" pending") == 2 and "4 already done, 2 to run" in dry, dry

    more = harness("submit", str(bigger_yaml(project)))
    assert "4 already done · 1 finished · 1 diverged" in more.stdout, more.stdout
    assert len(child_runs("s4")) == 6
    status = harness("status", "s4").stdout
    assert status.count("finished") == 3 and status.count("diverged") == 3
    assert sweep_status("s4") == ("finished", "FINISHED")


def bigger_yaml(project: Path) -> Path:
    return sweep_yaml(project, "s4", {"model.moe.n_routed_experts": [4, 8, 16],
                                      "optim.lr": [3e-3, 50.0]})


def sweep_status(name: str) -> tuple[str, str]:
    """The sweep parent run's status tag and MLflow status."""
    parent = Store().parent(name)
    return parent.data.tags["status"], parent.info.status


def test_sigkilled_worker_resumes_into_the_same_run(project: Path) -> None:
    path = sweep_yaml(project, "kill", {"model.moe.n_routed_experts": [4]}, steps=160)
    proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ckpt_root = project / ".harness" / "checkpoints"
    killed = False
    deadline = time.monotonic() + 240
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        if list(ckpt_root.glob("*/ckpt.pt")) and trial_workers(project):
            for pid in trial_workers(project):
                os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=300)
    assert killed, f"no trial worker to kill\n{out[-2000:]}"
    assert proc.returncode == 0, out[-3000:]
    runs = child_runs("kill")
    assert len(runs) == 1 and runs[0].data.tags["status"] == "finished"
    assert steps_of(runs[0].info.run_id) == list(range(2, 161, 2))

    trial = load_sweep(path).expand()[0]
    clean = MemoryTracker()
    run_trial(trial, clean, None, cache_dir=project / "cache")
    assert runs[0].data.metrics["val/loss"] == pytest.approx(clean.history("val/loss")[-1][1],
                                                             rel=1e-6)


def test_interrupted_driver_then_resume_finishes_without_rerunning(project: Path) -> None:
    path = sweep_yaml(project, "intr", {"model.moe.n_routed_experts": [4, 8, 16],
                                        "optim.name": ["adamw", "muon"]}, steps=60)
    proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    results = project / ".harness" / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(results.glob("*/result.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    done_before = {p.parent.name for p in results.glob("*/result.json")}
    assert 2 <= len(done_before) < 6, out[-2000:]

    resumed = harness("resume", "intr")
    assert "6 trials" in resumed.stdout and "0 failed" in resumed.stdout, resumed.stdout
    runs = child_runs("intr")
    assert len(runs) == 6 and {r.data.tags["status"] for r in runs} == {"finished"}
    assert sweep_status("intr") == ("finished", "FINISHED")  # the resume completed it
    for r in runs:
        steps = steps_of(r.info.run_id)
        assert steps == sorted(set(steps)) and steps[-1] == 60


def test_cluster_address_and_ui(project: Path) -> None:
    ray = str(Path(sys.executable).parent / "ray")
    temp = Path("/tmp") / f"rayc{os.getpid()}"  # short: Ray's socket paths have a length limit
    port = free_port()
    # --block keeps the head in the foreground so the test stops its own cluster only (a
    # `ray stop` would stop every Ray on the machine).
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_for_port(port, head)
        path = sweep_yaml(project, "clus", {"model.moe.n_routed_experts": [4, 8]})
        out = harness("submit", str(path), "--address", f"127.0.0.1:{port}")
        assert "2 finished" in out.stdout, out.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    _check_ui_lists_runs("clus", 2)


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"ray head did not start on port {port}")
        time.sleep(0.5)


def _check_ui_lists_runs(name: str, n_runs: int) -> None:
    port = free_port()
    ui = subprocess.Popen([HARNESS, "ui", "--port", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name="
                                            f"{name}", timeout=5) as r:
                    exp_id = json.load(r)["experiment"]["experiment_id"]
                break
            except OSError:
                if time.monotonic() > deadline or ui.poll() is not None:
                    raise
                time.sleep(1)
        body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
        req = urllib.request.Request(f"{base}/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            runs = json.load(r)["runs"]
        assert len(runs) == n_runs + 1  # children + the sweep's parent run
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_repair_logs_derived_params_of_old_finished_runs(project: Path) -> None:
    """A finished run logged without the derived params (older harness) gets them from
    ``harness repair``; submit itself no longer touches finished runs."""
    from mlflow.entities import Param

    from harness.launch import submit
    from harness.status import repair

    sweep = load_sweep(write_sweep(project, "old", {"optim.lr": [3e-3]}))
    (trial,) = sweep.expand()
    client = mlflow_client()
    exp = client.create_experiment("old")
    tags = {"trial_hash": trial.hash, "status": "finished"}
    run_id = client.create_run(exp, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in trial.flat().items()])

    summary = submit(sweep)  # nothing to run: the trial is finished
    assert summary.skipped == 1 and summary.finished == 0
    assert "arm" not in client.get_run(run_id).data.params
    out = harness("repair", "old")
    assert "old: 1 runs repaired" in out.stdout
    params = client.get_run(run_id).data.params
    assert params["arm"] == trial.optim.arm
    assert params["params_active"] == str(trial.model.param_counts().active)
    assert params["sparsity"] == str(trial.model.sparsity) and len(params["data_sha"]) == 12
    assert repair("old") == 0  # complete runs untouched
