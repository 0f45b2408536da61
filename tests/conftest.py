"""Shared fixtures: a temporary project folder for tests that drive the CLI, Ray and MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest


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
