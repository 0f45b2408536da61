"""Shared fixtures: a temporary project folder for tests that drive the CLI, Ray and MLflow.

``make test`` runs the suite in two passes: every test not marked ``serial`` on two pytest-xdist
workers, then the ``serial`` ones alone. A module that starts Ray (a real submit, a cluster),
waits on wall-clock deadlines or times itself, or runs several training processes at once (gloo
ranks, torchrun, the bench) is ``serial`` (:data:`SERIAL_MODULES`), so no two Ray clusters share
the machine, no deadline races another worker for the cores, and no process group is torn down
on a machine its peers overload.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SERIAL_MODULES = frozenset({
    "test_launch", "test_prefix_sweep", "test_cli", "test_drivers", "test_chaos", "test_load",
    "test_security", "test_storage_faults", "test_tracking_faults", "test_storage_full_sweep",
    "test_bad_input", "test_ui_browser", "test_data_parallel_sweep",
    "test_distributed", "test_bench", "test_no_cluster_stack", "test_yaml_bounds",
})
"""Test modules that start Ray, wait on deadlines or run several training processes: run alone,
after the parallel pass."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project folder: cwd, its own SQLite MLflow store, storage and data cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HARNESS_STORAGE", str(tmp_path / ".harness"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("HARNESS_MEMORY_GIB", raising=False)
    return tmp_path
