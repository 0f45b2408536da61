"""Damaged trial files, durable writes, concurrent writers.

- A damaged ``ckpt.pt`` (truncated, empty, zeroed, random bytes, one byte of the weights
  changed, a dict without the trainer's keys) is set aside as ``ckpt.pt.damaged-<time>``, with
  one warning line naming the file and the reason; the trial resumes from ``ckpt.prev.pt`` (the
  checkpoint before, kept by every save) or, with none left, restarts from step 0. Either way its
  curve equals an uninterrupted run's exactly.
- A damaged ``result.json`` is set aside the same way; the trial is trained again, or resumed
  from a checkpoint where one is left.
- A checkpoint holding a pickled call is refused with an error naming it, and kept for a person
  to look at: it is not damage, and nothing in it runs.
- Every atomic write fsyncs the file before the rename and the folder after it.
- Each writer has its own temporary file: two writing one target never crash, the target is one
  whole write, and no temporary file is left behind (a killed writer's is removed later).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import random
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sweeptools import trial_dict

from harness.checkpoint import save_atomic, write_json_atomic
from harness.config import HarnessError, TrialConfig
from harness.record import WORK
from harness.tracking import MemoryTracker
from harness.train import CKPT, FINAL, RESULT, run_trial

PREV = "ckpt.prev.pt"
KEYS = ("train/loss", "val/loss", "grad_norm", "attn/max_logit", "moe/imbalance")


def tiny() -> TrialConfig:
    """16 steps, a checkpoint every 4, a log every 2, an evaluation every 8."""
    return TrialConfig.model_validate(trial_dict(16))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> MemoryTracker:
    """The uninterrupted run every recovered one must equal."""
    tracker = MemoryTracker()
    run_trial(tiny(), tracker, None, cache_dir=tmp_path_factory.mktemp("clean"))
    return tracker


def assert_same_curve(tracker: MemoryTracker, clean: MemoryTracker) -> None:
    assert tracker.status == "finished"
    for key in KEYS:
        assert tracker.history(key) == clean.history(key), key


def assert_finished_folder(folder: Path) -> None:
    """A finished trial keeps its record, its final weights, its work log and the set-aside
    files, nothing else."""
    left = sorted(p.name for p in folder.iterdir() if ".damaged-" not in p.name)
    assert left == [FINAL, RESULT, WORK], left


def flip_in_largest_member(data: bytes) -> bytes:
    """One byte of the largest tensor changed: torch would load it without a word."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    off = info.header_offset
    start = off + 30 + int.from_bytes(data[off + 26 : off + 28], "little") + int.from_bytes(
        data[off + 28 : off + 30], "little")
    out = bytearray(data)
    out[start + info.file_size // 2] ^= 0xFF
    return bytes(out)


def no_keys(data: bytes) -> bytes:
    """A whole, valid checkpoint that is not the trainer's: only a step."""
    buf = io.BytesIO()
    torch.save({"step": 8}, buf)
    return buf.getvalue()


CKPT_DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda b: b[: len(b) // 2], "not a complete checkpoint archive"),
    "empty": (lambda b: b"", "not a complete checkpoint archive"),
    "zeroed": (lambda b: bytes(len(b)), "not a complete checkpoint archive"),
    "random bytes": (lambda b: random.Random(0).randbytes(len(b)),
                     "not a complete checkpoint archive"),
    "one byte flipped": (flip_in_largest_member, "checksum mismatch"),
    "missing keys": (no_keys, "lacks model, optimizer"),
}


def damage(path: Path, how: Callable[[bytes], bytes]) -> bytes:
    data = how(path.read_bytes())
    path.write_bytes(data)
    return data


def damaged_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "damaged" in r.getMessage()]


def set_aside(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.damaged-*"))


@pytest.mark.parametrize("case", list(CKPT_DAMAGE))
def test_damaged_checkpoint_resumes_from_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean: MemoryTracker, case: str
) -> None:
    how, reason = CKPT_DAMAGE[case]
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=9)
    assert (folder / PREV).exists()  # step 4; ckpt.pt holds step 8
    bad = damage(folder / CKPT, how)
    caplog.set_level(logging.INFO)
    resumed = MemoryTracker()
    assert run_trial(tiny(), resumed, folder, cache_dir=tmp_path).status == "finished"
    assert_same_curve(resumed, clean)
    (line,) = damaged_warnings(caplog)
    assert str(folder / CKPT) in line and reason in line and "\n" not in line, line
    assert f"resumes from {PREV}" in line, line
    assert any(f"resumed at step 4 from {PREV}" in r.getMessage() for r in caplog.records)
    (aside,) = set_aside(folder, CKPT)
    assert aside.name in line and aside.read_bytes() == bad
    assert_finished_folder(folder)


def test_damaged_checkpoint_without_a_previous_one_restarts_from_step_0(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean: MemoryTracker
) -> None:
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=5)
    assert not (folder / PREV).exists()  # the first checkpoint has none before it
    damage(folder / CKPT, CKPT_DAMAGE["random bytes"][0])
    restarted = MemoryTracker()
    assert run_trial(tiny(), restarted, folder, cache_dir=tmp_path).status == "finished"
    assert_same_curve(restarted, clean)
    (line,) = damaged_warnings(caplog)
    assert str(folder / CKPT) in line and "restarts from step 0" in line, line
    assert len(set_aside(folder, CKPT)) == 1
    assert_finished_folder(folder)


def test_both_checkpoints_damaged_restarts_from_step_0(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean: MemoryTracker
) -> None:
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=9)
    damage(folder / CKPT, CKPT_DAMAGE["zeroed"][0])
    damage(folder / PREV, CKPT_DAMAGE["truncated"][0])
    restarted = MemoryTracker()
    assert run_trial(tiny(), restarted, folder, cache_dir=tmp_path).status == "finished"
    assert_same_curve(restarted, clean)
    first, second = damaged_warnings(caplog)
    assert str(folder / CKPT) in first and f"resumes from {PREV}" in first, first
    assert str(folder / PREV) in second and "restarts from step 0" in second, second
    assert len(set_aside(folder, CKPT)) == len(set_aside(folder, PREV)) == 1
    assert_finished_folder(folder)


def _record(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / RESULT).read_text()))


RESULT_DAMAGE: dict[str, tuple[Callable[[dict[str, Any], str], str], str]] = {
    "truncated": (lambda r, t: t[: len(t) // 2], "not JSON"),
    "empty": (lambda r, t: "", "not JSON"),
    "not JSON": (lambda r, t: "<html>502 Bad Gateway</html>", "not JSON"),
    "random bytes": (lambda r, t: random.Random(1).randbytes(len(t)).decode("latin-1"),
                     "not JSON"),
    "a list": (lambda r, t: "[1, 2]", "not a JSON object"),
    "missing keys": (lambda r, t: json.dumps({"result": r["result"]}), "lacks rows, artifacts"),
    "result missing a field": (
        lambda r, t: json.dumps({**r, "result": {k: v for k, v in r["result"].items()
                                                 if k != "steps"}}), "result"),
    "rows of the wrong type": (lambda r, t: json.dumps({**r, "rows": [["x", 1]]}), "rows"),
}


@pytest.mark.parametrize("case", list(RESULT_DAMAGE))
def test_damaged_result_is_set_aside_and_the_trial_trained_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean: MemoryTracker, case: str
) -> None:
    how, reason = RESULT_DAMAGE[case]
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path)
    text = (folder / RESULT).read_text()
    bad = how(json.loads(text), text)
    (folder / RESULT).write_bytes(bad.encode("latin-1"))
    again = MemoryTracker()
    assert run_trial(tiny(), again, folder, cache_dir=tmp_path).status == "finished"
    assert_same_curve(again, clean)
    (line,) = damaged_warnings(caplog)
    assert str(folder / RESULT) in line and reason in line and "\n" not in line, line
    assert "trained again" in line, line
    (aside,) = set_aside(folder, RESULT)
    assert aside.name in line and aside.read_bytes() == bad.encode("latin-1")
    assert _record(folder)["result"]["status"] == "finished"
    assert_finished_folder(folder)
    caplog.clear()
    replayed = MemoryTracker()  # the new record is whole: replayed, not trained a third time
    assert run_trial(tiny(), replayed, folder, cache_dir=tmp_path).status == "finished"
    assert_same_curve(replayed, clean)
    assert not damaged_warnings(caplog) and len(set_aside(folder, RESULT)) == 1


def test_damaged_result_with_a_checkpoint_left_resumes_from_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean: MemoryTracker
) -> None:
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=9)
    (folder / RESULT).write_text('{"result": {"status": "fini')
    caplog.set_level(logging.INFO)
    resumed = MemoryTracker()
    assert run_trial(tiny(), resumed, folder, cache_dir=tmp_path).status == "finished"
    assert_same_curve(resumed, clean)
    (line,) = damaged_warnings(caplog)
    assert str(folder / RESULT) in line and f"resumes from {CKPT}" in line, line
    assert any(f"resumed at step 8 from {CKPT}" in r.getMessage() for r in caplog.records)
    assert_finished_folder(folder)


class Payload:
    """Unpickling this runs a command: what a hostile checkpoint would carry."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.canary}",))


def test_hostile_checkpoint_is_refused_and_kept_not_set_aside(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=9)
    canary = tmp_path / "pwned"
    torch.save({"step": 8, "elapsed": Payload(canary)}, folder / CKPT)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed") as e:
        run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path)
    msg = str(e.value)
    assert str(folder / CKPT) in msg and "nothing in it was run" in msg and "\n" not in msg, msg
    assert "posix.system" in msg or "os.system" in msg, msg
    assert "weights_only set to `False`" not in msg  # no advice to run it
    assert not canary.exists() and (folder / CKPT).exists() and not set_aside(folder, CKPT)


# writes ----------------------------------------------------------------------------------------

def _save(obj: Any, path: Path) -> None:
    save_atomic(obj, path)


def _save_keeping_previous(obj: Any, path: Path) -> None:
    save_atomic(obj, path, previous=path.with_name(PREV))


WRITERS: dict[str, tuple[str, Callable[[Any, Path], None]]] = {
    "checkpoint": (CKPT, _save),
    "checkpoint keeping the previous": (CKPT, _save_keeping_previous),
    "json": (RESULT, write_json_atomic),
}


def _payload(kind: str, writer: int, k: int) -> Any:
    if kind == RESULT:
        return {"writer": writer, "k": k, "pad": str(writer) * 200_000}
    return {"writer": writer, "k": k, "w": torch.full((100_000,), float(writer * 1000 + k))}


def _read_back(kind: str, path: Path) -> tuple[int, int]:
    """(writer, k) of the whole write at ``path``; fails on a torn or mixed one."""
    if kind == RESULT:
        obj = json.loads(path.read_text())
        assert obj["pad"] == str(obj["writer"]) * 200_000
    else:
        obj = torch.load(path, weights_only=True)
        assert torch.equal(obj["w"], torch.full((100_000,), float(obj["writer"] * 1000 + obj["k"])))
    return int(obj["writer"]), int(obj["k"])


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("writer", list(WRITERS))
def test_two_writers_of_one_file_never_crash(tmp_path: Path, writer: str) -> None:
    name, write = WRITERS[writer]
    target, rounds = tmp_path / name, 40
    start, errors = threading.Barrier(2), []

    def work(i: int) -> None:
        start.wait()
        for k in range(rounds):
            try:
                write(_payload(name, i, k), target)
            except Exception as e:  # the failure this test is about
                errors.append(f"writer {i}, write {k}: {type(e).__name__}: {e}")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer still runs after 120 s"
    assert not errors, errors
    w, k = _read_back(name, target)
    assert w in (1, 2) and 0 <= k < rounds
    if writer == "checkpoint keeping the previous":
        _read_back(name, tmp_path / PREV)
    assert not temporaries(tmp_path)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_write_fsyncs_the_file_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    name, write = WRITERS[writer]
    target = tmp_path / name
    write(_payload(name, 0, 0), target)  # there is a file to replace (and to keep as previous)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", os.path.realpath(src) + " -> " + os.path.realpath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr("harness.checkpoint.os.fsync", fsync)
    monkeypatch.setattr("harness.checkpoint.os.replace", replace)
    write(_payload(name, 0, 1), target)
    monkeypatch.undo()
    assert _read_back(name, target) == (0, 1)
    final = os.path.realpath(target)
    last = max(i for i, (what, arg) in enumerate(events)
               if what == "replace" and arg.endswith(" -> " + final))
    tmp = events[last][1].split(" -> ")[0]
    assert tmp.endswith(".tmp") and os.path.dirname(tmp) == os.path.dirname(final), events
    assert ("fsync", tmp) in events[:last], events  # the data is on disk before the rename
    assert ("fsync", os.path.realpath(tmp_path)) in events[last + 1 :], events  # and the rename


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    name, write = WRITERS[writer]
    target = tmp_path / name
    write(_payload(name, 0, 0), target)

    def replace_fails(src: str | Path, dst: str | Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("harness.checkpoint.os.replace", replace_fails)
    with pytest.raises(OSError, match=f"cannot write .*{name}: Input/output error"):
        write(_payload(name, 0, 1), target)
    monkeypatch.undo()
    assert _read_back(name, target) == (0, 0) and not temporaries(tmp_path)


def test_a_killed_writers_temporary_is_removed(tmp_path: Path) -> None:
    """Left by a SIGKILL mid-save: removed on resume once an hour old, and when the trial ends."""
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=5)
    old, fresh = folder / f"{CKPT}.111.aaaa.tmp", folder / f"{CKPT}.222.bbbb.tmp"
    for p in (old, fresh):
        p.write_bytes(b"half a checkpoint")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=9)
    assert not old.exists() and fresh.exists()  # a fresh one may be another writer's
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path)
    assert_finished_folder(folder)


def test_a_damaged_file_that_cannot_be_set_aside_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "c"
    run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path, stop_after=5)
    damage(folder / CKPT, CKPT_DAMAGE["zeroed"][0])

    def rename_fails(src: str | Path, dst: str | Path) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("harness.checkpoint.os.rename", rename_fails)
    with pytest.raises(OSError) as e:
        run_trial(tiny(), MemoryTracker(), folder, cache_dir=tmp_path)
    msg = str(e.value)
    assert str(folder / CKPT) in msg and "not a complete checkpoint archive" in msg, msg
    assert "Read-only file system" in msg and "move or delete it by hand" in msg, msg
    assert isinstance(e.value, HarnessError) and "\n" not in msg  # the CLI says it in one line


def test_a_record_of_other_data_is_refused_not_replayed(tmp_path: Path) -> None:
    """Rewriting a text corpus under the same names replayed the old result.json with the old
    curve and data id before the fix."""
    from harness.record import DataChangedError

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"f{i}.txt").write_text(f"document {i} " * 400)
    raw = trial_dict(steps=4)
    raw["data"] = {"corpus": "text", "path": str(corpus), "val_tokens": 512,
                   "val_fraction": 0.3}
    trial = TrialConfig.model_validate(raw)
    ckpt, cache = tmp_path / "c", tmp_path / "cache"
    run_trial(trial, MemoryTracker(), ckpt, cache_dir=cache)
    assert (ckpt / RESULT).exists()
    run_trial(trial, MemoryTracker(), ckpt, cache_dir=cache)  # same data: replayed
    for i in range(8):
        (corpus / f"f{i}.txt").write_text(f"rewritten {i} " * 400)
    with pytest.raises(DataChangedError, match=r"result.json was trained on data [0-9a-f]{12}, "
                                               r"but the trial's data now gives [0-9a-f]{12}"):
        run_trial(trial, MemoryTracker(), ckpt, cache_dir=cache)
