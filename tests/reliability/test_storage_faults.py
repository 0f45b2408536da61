"""Storage faults: torn checkpoint writes, unwritable and full storage.

A checkpoint is written to ``ckpt.pt.tmp`` and renamed over ``ckpt.pt``, so a crash at any point
of a save leaves the previous checkpoint loadable; a full disk is an error that names the
checkpoint, never torch's opaque "unexpected pos"; storage that cannot take the sweep is refused
at submit, in one line (exit 2), before MLflow or Ray is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sweeptools import Tmpfs, harness, trial_dict, write_sweep

from harness.config import ConfigError, TrialConfig
from harness.data import load_data
from harness.memory import checkpoint_bytes
from harness.preflight import check_storage, final_weights_bytes
from harness.tracking import MemoryTracker
from harness.train import CKPT, RESULT, run_trial

KEYS = ("train/loss", "val/loss", "grad_norm", "attn/max_logit", "moe/imbalance")


def tiny(**train: object) -> TrialConfig:
    return TrialConfig.model_validate(trial_dict(16, **train))


def straight(trial: TrialConfig, cache: Path) -> MemoryTracker:
    tracker = MemoryTracker()
    run_trial(trial, tracker, None, cache_dir=cache)
    return tracker


def saved_step(ckpt_dir: Path) -> int:
    return int(torch.load(ckpt_dir / CKPT, weights_only=True)["step"])


def test_resume_between_two_logs_gives_the_same_curve(tmp_path: Path) -> None:
    # Checkpoints every 4 steps, logs every 3 (eval at the end only): the checkpoint at step 8
    # falls inside a logging window.
    trial = tiny(log_every=3, eval_every=16 * 512)
    clean = straight(trial, tmp_path)
    run_trial(trial, MemoryTracker(), tmp_path / "c", cache_dir=tmp_path, stop_after=10)
    assert saved_step(tmp_path / "c") == 8
    resumed = MemoryTracker()
    run_trial(trial, resumed, tmp_path / "c", cache_dir=tmp_path)
    for key in KEYS:
        assert resumed.history(key) == clean.history(key), key


def test_failed_rename_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trial = tiny()
    ckpt = tmp_path / "c"
    run_trial(trial, MemoryTracker(), ckpt, cache_dir=tmp_path, stop_after=5)
    assert saved_step(ckpt) == 4

    def replace_fails(src: str, dst: str) -> None:
        assert Path(src).stat().st_size > 0  # the new checkpoint was written in full first
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("harness.checkpoint.os.replace", replace_fails)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*ckpt\.pt: Input/output error"):
        run_trial(trial, MemoryTracker(), ckpt, cache_dir=tmp_path)
    monkeypatch.undo()
    assert saved_step(ckpt) == 4 and not (ckpt / f"{CKPT}.tmp").exists()

    resumed = MemoryTracker()
    assert run_trial(trial, resumed, ckpt, cache_dir=tmp_path).status == "finished"
    clean = straight(trial, tmp_path)
    for key in KEYS:
        assert resumed.history(key) == clean.history(key), key


KILL_MID_SAVE = """
import io, os, signal, sys
import torch
from harness.config import TrialConfig
from harness.tracking import MemoryTracker
from harness.train import run_trial

real_save, calls = torch.save, []

def torn_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) < 2:
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: buf.tell() // 2])  # half of the second checkpoint, then death
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = torn_save
trial = TrialConfig.model_validate_json(sys.argv[1])
run_trial(trial, MemoryTracker(), sys.argv[2], cache_dir=sys.argv[3])
"""


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    trial = tiny()
    ckpt = tmp_path / "c"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_SAVE, trial.model_dump_json(), str(ckpt), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (torn,) = ckpt.glob(f"{CKPT}.*.tmp")  # each writer has its own temporary file
    assert torn.exists() and torn.stat().st_size < (ckpt / CKPT).stat().st_size
    with pytest.raises(RuntimeError):
        torch.load(torn, weights_only=True)
    assert saved_step(ckpt) == 4  # the first checkpoint, whole

    resumed = MemoryTracker()
    assert run_trial(trial, resumed, ckpt, cache_dir=tmp_path).status == "finished"
    assert (ckpt / RESULT).exists() and not torn.exists() and not (ckpt / CKPT).exists()
    assert resumed.history("train/loss") == straight(trial, tmp_path).history("train/loss")


FILE_SIZE_LIMIT = """
import resource, signal, sys
from harness.config import TrialConfig
from harness.tracking import MemoryTracker
from harness.train import run_trial

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
trial = TrialConfig.model_validate_json(sys.argv[1])
run_trial(trial, MemoryTracker(), sys.argv[2], cache_dir=sys.argv[3])
"""


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def test_full_disk_during_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    """A real full disk (a 64 KiB tmpfs) as root; elsewhere a file-size limit in a subprocess."""
    trial = tiny()
    load_data(trial.data, tmp_path)  # the token cache exists: only checkpoints are written
    if _can_mount():
        mount = Tmpfs.mount(tmp_path / "small", "64k")
        ckpt = mount.path / "c"
        try:
            with pytest.raises(OSError) as e:
                run_trial(trial, MemoryTracker(), ckpt, cache_dir=tmp_path)
            last, reason = str(e.value), "No space left on device"
        finally:
            mount.unmount()
    else:
        ckpt = tmp_path / "c"
        proc = subprocess.run(
            [sys.executable, "-c", FILE_SIZE_LIMIT, trial.model_dump_json(), str(ckpt),
             str(tmp_path)], capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]
        last, reason = proc.stderr.strip().splitlines()[-1], "File too large"
        assert not (ckpt / f"{CKPT}.tmp").exists()
    assert f"cannot write checkpoint {ckpt / CKPT}: {reason} (" in last, last
    assert "MiB free)" in last and "\n" not in last


@pytest.fixture
def read_only_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder nothing can be written to: a read-only tmpfs as root, else mode 0555."""
    path = tmp_path / "ro"
    if os.geteuid() == 0:
        mount = Tmpfs.mount(path, "1m", read_only=True)
        yield path
        mount.unmount()
    else:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def submit_fails_fast(project: Path, storage: Path, name: str) -> str:
    sweep = write_sweep(project, name, {"model.moe.n_routed_experts": [4, 8]})
    t0 = time.monotonic()
    out = harness("submit", str(sweep), check=False, timeout=120,
                  env={"HARNESS_STORAGE": str(storage)})
    elapsed = time.monotonic() - t0
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"harness: error: HARNESS_STORAGE ({storage})"), lines
    assert elapsed < 60, f"took {elapsed:.0f}s"
    # nothing was launched or recorded: no Ray state, no experiment in MLflow
    assert not (storage / "ray").exists() and not (project / "mlflow.db").exists()
    return lines[0]


def test_read_only_storage_is_refused_in_one_line(project: Path, read_only_dir: Path) -> None:
    assert "not writable" in submit_fails_fast(project, read_only_dir, "ro")
    with pytest.raises(ConfigError, match=r"HARNESS_STORAGE \(.*/deeper\): not writable"):
        check_storage(read_only_dir / "deeper", [])  # cannot even make the folder


def test_full_storage_is_refused_with_the_figures(project: Path) -> None:
    trials = [tiny(), tiny(seed=1)]
    # each trial's ckpt.pt and ckpt.prev.pt, plus the one being written, and each final.pt
    need = ((2 * 2 + 1) * checkpoint_bytes(trials[0]) + 2 * final_weights_bytes(trials[0])) / 2**20
    mount = Tmpfs.mount(project / "full", "128k")
    try:
        with pytest.raises(ConfigError) as e:
            check_storage(mount.path, trials)
        assert str(e.value) == (f"HARNESS_STORAGE ({mount.path}): 0.12 MiB free, the "
                                f"checkpoints of 2 trials need ~{need:.2f} MiB")
    finally:
        mount.unmount()
