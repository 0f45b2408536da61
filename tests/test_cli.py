"""The command's own behaviour (harness.cli) and the Makefile targets that wrap it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli

ROOT = Path(__file__).resolve().parent.parent


def test_next_commands_work_as_printed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the venv on PATH, the printed command is the path it was started by."""
    exe = Path(sys.executable).parent / "harness"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [str(exe), "submit"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no harness on PATH
    inside = exe.resolve().is_relative_to(ROOT)
    expected = str(exe.resolve().relative_to(ROOT)) if inside else str(exe)
    assert cli.me() == expected and cli.me() != "harness"
    monkeypatch.setenv("PATH", str(exe.parent))
    assert cli.me() == "harness"


def make_n(*args: str) -> str:
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_ui_takes_a_port() -> None:
    assert "harness ui --port 5000" in make_n("ui")
    assert "harness ui --port 5123" in make_n("ui", "PORT=5123")


def test_make_demo_leaves_the_committed_results_alone() -> None:
    demo = make_n("demo")
    assert "harness plots --experiment smoke --refresh --out results-local" in demo
    assert "results-local/" in (ROOT / ".gitignore").read_text().splitlines()


def test_bugs_are_not_reported_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the project's own errors exit 2 in one line; a KeyError is a bug: traceback."""
    def broken(name: str | None) -> str:
        raise KeyError("status")

    monkeypatch.setattr("harness.status.status_text", broken)
    with pytest.raises(KeyError):
        cli.main(["status"])
