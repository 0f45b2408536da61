"""Security: safe YAML, weights-only checkpoints, a local-only UI, no shell, visible paths.

- YAML is read with a safe loader: every ``!!python/...`` tag is an error and runs nothing.
- Checkpoints load with ``torch.load(weights_only=True)``: a pickled object is refused.
- ``harness ui`` listens on 127.0.0.1 unless ``--host`` is given, and says so.
- No string reaches a shell: the package has no ``shell=True``, ``os.system``, ``eval`` ...
- Relative paths in a YAML (data.path) mean the submit folder, in the trials too, and are shown
  resolved before anything runs.
"""

from __future__ import annotations

import ast
import os
import pickle
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from sweeptools import HARNESS, child_runs, free_port, harness, trial_dict, write_sweep

from harness.cli import main
from harness.config import ConfigError, TrialConfig, load_sweep
from harness.preflight import paths_summary
from harness.tracking import MemoryTracker
from harness.train import CKPT, run_trial

ROOT = Path(__file__).resolve().parents[2]

TAGS = [
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object/apply:os.system ['touch {canary}']",
    "!!python/object/apply:subprocess.check_call [['touch', '{canary}']]",
    "!!python/object/new:os.system ['touch {canary}']",
    "!!python/object:argparse.Namespace {{x: 1}}",
]
PLACES = {
    "top": "name: t\ndescription: {tag}\n",
    "nested": "name: t\nbase: {{model: {{d_model: {tag}}}}}\n",
    "grid": "name: t\ngrid:\n  optim.lr:\n  - {tag}\n",
    "key": "name: t\nbase:\n  ? {tag}\n  : 1\n",
}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("tag", TAGS, ids=[t.split()[0].removeprefix("!!python/") for t in TAGS])
def test_python_tags_are_refused_and_run_nothing(tmp_path: Path, tag: str, place: str) -> None:
    canary = tmp_path / "pwned"
    path = tmp_path / "s.yaml"
    path.write_text(PLACES[place].format(tag=tag.format(canary=canary)))
    with pytest.raises(ConfigError, match="invalid YAML") as e:
        load_sweep(path)
    assert "\n" not in str(e.value) and not canary.exists()


class Payload:
    """Unpickling this runs a command: what a hostile checkpoint would carry."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.canary}",))


def test_checkpoint_with_a_pickled_object_is_refused_on_resume(tmp_path: Path) -> None:
    trial = TrialConfig.model_validate(trial_dict(16))
    ckpt = tmp_path / "c"
    ckpt.mkdir()
    canary = tmp_path / "pwned"
    torch.save({"step": 4, "elapsed": Payload(canary)}, ckpt / CKPT)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_trial(trial, MemoryTracker(), ckpt, cache_dir=tmp_path)
    assert not canary.exists()


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} give them) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                out.append(addr)
    return out


def _outward_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.mark.parametrize(("args", "host", "says"), [
    ([], "127.0.0.1", "this machine only"),
    (["--host", "0.0.0.0"], "0.0.0.0", "ALL interfaces via 0.0.0.0"),
])
def test_ui_asks_mlflow_for_loopback_unless_told_and_says_so(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    args: list[str], host: str, says: str,
) -> None:
    execs: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: execs.append(argv))
    main(["ui", "--port", "5999", *args])
    (argv,) = execs
    assert argv[argv.index("--host") + 1] == host and argv[argv.index("--port") + 1] == "5999"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"MLflow UI on http://{host}:5999" in err[0] and says in err[0], err


@pytest.mark.reliability_slow
def test_ui_listens_on_loopback_only(project: Path) -> None:
    port = free_port()
    ui = subprocess.Popen([HARNESS, "ui", "--port", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        assert ui.stderr is not None
        first = ui.stderr.readline()
        assert f"MLflow UI on http://127.0.0.1:{port}" in first, first
        assert "this machine only" in first, first
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert ui.poll() is None and time.monotonic() < deadline, "the UI never listened"
            time.sleep(0.5)
        assert set(_listening(port)) == {"0100007F"}, _listening(port)  # 127.0.0.1 only
        ip = _outward_ip()
        if ip is not None:
            with pytest.raises(ConnectionRefusedError), socket.create_connection((ip, port), 5):
                pass
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput"), ("os", "execlp"), ("os", "spawnlp")}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            call = (f.value.id, f.attr)
            if call in SHELL_CALLS:
                found.append(f"{where}: {'.'.join(call)}")
            if call == ("torch", "load") and not any(
                k.arg == "weights_only" and getattr(k.value, "value", None) is True
                for k in node.keywords
            ):
                found.append(f"{where}: torch.load without weights_only=True")
            if call in {("pickle", "load"), ("pickle", "loads"), ("yaml", "unsafe_load")}:
                found.append(f"{where}: {'.'.join(call)}")
            if call == ("yaml", "load") and not any(k.arg == "Loader" for k in node.keywords):
                found.append(f"{where}: yaml.load without a safe Loader")
        if isinstance(f, ast.Name) and f.id in {"eval", "exec"}:
            found.append(f"{where}: {f.id}")
        for k in node.keywords:
            if k.arg == "shell" and getattr(k.value, "value", None) is not False:
                found.append(f"{where}: shell={ast.unparse(k.value)}")
    return found


def test_no_string_reaches_a_shell_and_nothing_unpickles() -> None:
    files = sorted((ROOT / "harness").rglob("*.py"))
    assert len(files) > 10
    found = [v for f in files for v in _violations(f)]
    assert not found, "\n".join(found)
    loader = (ROOT / "harness" / "config" / "files.py").read_text()
    assert "class _Loader(yaml.SafeLoader)" in loader and "Loader=_Loader" in loader


def test_the_checker_catches_what_it_looks_for(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os, subprocess, torch, yaml\nos.system('x')\n"
                     "subprocess.run('x', shell=True)\ntorch.load('f')\nyaml.load('x')\n"
                     "eval('1')\ntorch.load('f', weights_only=True)\n")
    found = _violations(probe)
    assert len(found) == 5, found


def test_paths_are_resolved_and_shown_before_anything_runs(project: Path) -> None:
    (project / "corpus").mkdir()
    (project / "corpus" / "a.txt").write_text("text " * 2000)  # an empty folder is refused
    raw = trial_dict(16)
    raw["data"] = {"corpus": "text", "path": "corpus", "val_tokens": 2048}
    spec = {"name": "paths", "base": raw, "grid": {"optim.lr": [1e-3, 2e-3]}}
    (project / "paths.yaml").write_text(yaml.safe_dump(spec))
    trials = load_sweep(project / "paths.yaml").expand()
    text = paths_summary(trials)
    assert f"data.path: corpus -> {project / 'corpus'}  (all trials, read only)" in text
    assert f"storage:   {project / '.harness'}" in text
    assert f"tracking:  sqlite:///{project / 'mlflow.db'}" in text
    assert f"cache:     {project / 'cache'}" in text
    raw["data"]["path"] = "elsewhere"
    (project / "paths.yaml").write_text(yaml.safe_dump({**spec, "base": raw}))
    assert "MISSING" in paths_summary(load_sweep(project / "paths.yaml").expand())
    assert not (project / "mlflow.db").exists() and not (project / ".harness").exists()


def test_dry_run_prints_the_resolved_paths(project: Path) -> None:
    (project / "corpus").mkdir()
    (project / "corpus" / "a.txt").write_text("text " * 2000)  # an empty folder is refused
    raw = trial_dict(16)
    raw["data"] = {"corpus": "text", "path": "corpus", "val_tokens": 2048}
    (project / "p.yaml").write_text(yaml.safe_dump({"name": "p", "base": raw}))
    out = harness("submit", str(project / "p.yaml"), "--dry-run")
    assert f"data.path: corpus -> {project / 'corpus'}" in out.stdout
    assert f"storage:   {project / '.harness'}" in out.stdout


@pytest.mark.reliability_slow
def test_relative_data_path_means_the_submit_folder_in_ray_trials(project: Path) -> None:
    corpus = project / "corpus"
    corpus.mkdir()
    source = (ROOT / "harness" / "train.py").read_bytes()
    for i in range(40):
        (corpus / f"f{i}.txt").write_bytes(source[i * 500 : i * 500 + 3000])
    path = write_sweep(project, "relp", {"model.moe.n_routed_experts": [4]}, steps=8)
    spec = yaml.safe_load(path.read_text())
    spec["base"]["data"] = {"corpus": "text", "path": "corpus", "val_tokens": 2048,
                            "val_fraction": 0.2, "test_fraction": 0.2}
    spec["max_failures"] = 0
    path.write_text(yaml.safe_dump(spec))
    out = harness("submit", str(path))
    assert "1 finished" in out.stdout, out.stdout + out.stderr[-2000:]
    (run,) = child_runs("relp")
    assert run.data.tags["status"] == "finished"
