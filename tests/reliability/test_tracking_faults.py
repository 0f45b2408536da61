"""Tracking faults: the MLflow server restarts mid-sweep; the tracking URI is unreachable.

Trials report to the driver, which is the only MLflow writer. While the server is down the
driver's requests wait and retry (MLflow's HTTP retries, then the tracker's own, with metrics
kept buffered), so a restart loses no point and duplicates none. An unreachable store at submit
is a one-line error (exit 2) before Ray starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sweeptools import (
    HARNESS,
    assert_each_step_once,
    child_runs,
    free_port,
    harness,
    histories,
    write_sweep,
)

from harness.config import load_sweep
from harness.tracking import MemoryTracker
from harness.train import run_trial


def test_unreachable_tracking_uri_is_one_line_before_launch(project: Path) -> None:
    sweep = write_sweep(project, "noserver", {"model.moe.n_routed_experts": [4, 8]})
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    out = harness("submit", str(sweep), check=False, timeout=120,
                  env={"MLFLOW_TRACKING_URI": uri})
    elapsed = time.monotonic() - t0
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"harness: error: MLFLOW_TRACKING_URI ({uri}): store unreachable")
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert not (project / ".harness").exists()  # no storage, no Ray state: nothing launched


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and served artifacts, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> float:
        """Start and wait until it answers; returns the seconds that took."""
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
               "--serve-artifacts", "--artifacts-destination", str(self.folder / "artifacts")]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return time.monotonic() - t0
            except OSError:
                assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
                assert time.monotonic() - t0 < timeout, "mlflow server did not come up"
                time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.mark.reliability_slow
@pytest.mark.timeout(900)
def test_server_restart_mid_sweep_loses_nothing(project: Path) -> None:
    server = MlflowServer(project)
    server.start()
    try:
        steps = 60
        path = write_sweep(project, "restart", {"model.moe.n_routed_experts": [4, 8],
                                                "optim.name": ["adamw", "muon"]}, steps=steps)
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
        proc = subprocess.Popen([HARNESS, "submit", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        ckpts = project / ".harness" / "checkpoints"
        deadline = time.monotonic() + 400
        while not list(ckpts.glob("*/ckpt.pt")):  # trials are logging: take the server away
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        t_down = time.monotonic()
        server.kill()
        time.sleep(3)
        server.start()
        outage = time.monotonic() - t_down
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
        assert "4 finished · 0 diverged · 0 failed" in out, out[-4000:]
        retries = out.lower().count("retrying")

        runs = child_runs("restart", server.uri)
        assert len(runs) == 4 and {r.data.tags["status"] for r in runs} == {"finished"}
        points = 0
        by_hash = {t.hash: t for t in load_sweep(path).expand()}
        for run in runs:
            hist = histories(run, server.uri)
            points += assert_each_step_once(hist, run.info.run_name)
            assert [s for s, _ in hist["train/loss"]] == list(range(2, steps + 1, 2))
            clean = MemoryTracker()
            run_trial(by_hash[run.data.tags["trial_hash"]], clean, None,
                      cache_dir=project / "cache")
            for key in ("train/loss", "val/loss", "grad_norm"):
                assert sorted(hist[key]) == clean.history(key), (run.info.run_name, key)
        print(f"\nserver down {outage:.1f}s mid-sweep; 4/4 trials finished; {points} points "
              f"stored, 0 lost, 0 duplicated; {retries} retried requests")
    finally:
        server.kill()
