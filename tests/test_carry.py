"""Carrying a sweep's finished trials to a fresh storage (harness.carry): the records travel, a
restored trial replays its run instead of training, and damaged or foreign files do not."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweeptools import write_sweep

from harness.carry import complete, main, restore_records, save_records
from harness.config import SweepConfig, load_sweep
from harness.record import WORK
from harness.tracking import MemoryTracker
from harness.train import FINAL, RESULT, run_trial

KEYS = ("train/loss", "val/loss", "test/loss", "attn/max_logit", "moe/imbalance")


def tiny_sweep(folder: Path) -> tuple[Path, SweepConfig]:
    """A two-trial sweep (two lrs) of the shared tiny trial."""
    path = write_sweep(folder, "carry", {"optim.lr": [3e-3, 1e-3]})
    return path, load_sweep(path)


def test_a_restored_record_replays_on_a_fresh_storage(tmp_path: Path) -> None:
    _, sweep = tiny_sweep(tmp_path)
    first, second = sweep.expand()
    old, new, carried = tmp_path / "old", tmp_path / "new", tmp_path / "records"
    trained = MemoryTracker()
    run_trial(first, trained, old / "checkpoints" / first.hash, cache_dir=tmp_path)
    # the second trial's record is torn: it stays behind
    (old / "checkpoints" / second.hash).mkdir(parents=True)
    (old / "checkpoints" / second.hash / RESULT).write_text('{"result": {')
    assert save_records(sweep, old, carried) == 1
    assert sorted(p.name for p in carried.iterdir()) == [f"{first.hash}.json"]
    (carried / "0123456789ab.json").write_text("{}")  # a trial this sweep no longer has

    assert restore_records(sweep, carried, new) == 1
    assert not complete(sweep, new)
    replayed = MemoryTracker()
    folder = new / "checkpoints" / first.hash
    result = run_trial(first, replayed, folder, cache_dir=tmp_path)
    assert result.status == "finished" and replayed.status == "finished"
    for key in KEYS:
        assert replayed.history(key) == trained.history(key), key
    assert replayed.params == trained.params
    assert not (folder / FINAL).exists() and not (folder / WORK).exists()  # nothing trained
    assert not (new / "checkpoints" / "0123456789ab").exists()
    assert restore_records(sweep, carried, new) == 0  # a record already there is kept


def test_drop_removes_the_records_only_once_the_sweep_is_complete(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, sweep = tiny_sweep(tmp_path)
    storage, carried = tmp_path / "store", tmp_path / "records"
    for trial in sweep.expand():
        run_trial(trial, MemoryTracker(), storage / "checkpoints" / trial.hash,
                  cache_dir=tmp_path)
        assert main(["save", str(path), str(carried), "--storage", str(storage)]) == 0
        assert main(["drop", str(path), str(carried), "--storage", str(storage)]) == 0
        assert carried.exists() != complete(sweep, storage)
    assert "all 2 trials finished" in capsys.readouterr().out


def test_a_bad_sweep_file_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nbase: {optim: {name: sgd}}\n")
    assert main(["save", str(path), str(tmp_path / "r"), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness.carry: error:") and "\n" not in err
    assert not (tmp_path / "r").exists()
