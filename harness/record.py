"""A finished trial's record, ``result.json``: written once when the trial ends, read back
(checked whole) when a restarted trial finds it, so a finished trial is never trained twice.

The record holds the result, every metric row, the artifacts, and the params and tags the run
logged (``params["data_sha"]`` names the data it was trained on). A damaged record is set aside
(``harness.checkpoint.set_aside``) and the trial trained again. This module is the one that
writes and reads the format.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.checkpoint import (
    DamagedFileError,
    read_json,
    remove_temps,
    set_aside,
    write_json_atomic,
)
from harness.config import HarnessError
from harness.data import TokenData
from harness.store import data_sha
from harness.tracking import TrialStatus

CKPT, PREV, RESULT = "ckpt.pt", "ckpt.prev.pt", "result.json"
FINAL = "final.pt"
"""A finished trial's final model weights (fp32 state dict, with its step, data id and config),
kept beside ``result.json`` so ``harness rescore`` can evaluate it on other splits."""


@dataclass(frozen=True)
class TrialResult:
    """Summary of a finished (or diverged) trial."""

    status: TrialStatus  # finished | diverged (interrupted: stopped early, not a result)
    steps: int
    tokens: int
    flops: float
    final_train_loss: float
    final_val_loss: float
    wall_s: float
    tokens_per_s: float
    final_test_loss: float = math.nan  # test/loss at the last step (NaN: diverged, older record)


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial's ``result.json``, checked whole before any of it is replayed."""

    result: TrialResult
    rows: list[tuple[int, dict[str, float]]]
    artifacts: dict[str, str]
    params: dict[str, Any]
    tags: dict[str, str]


def _part(path: Path, name: str, parse: Callable[[], Any]) -> Any:
    """``parse()``, or DamagedFileError naming the part of the record that is malformed."""
    try:
        return parse()
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise DamagedFileError(path, f"malformed {name}: {type(e).__name__}: {e}") from e


def _artifacts(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise TypeError("not an object of texts")
    return {str(k): v for k, v in raw.items()}


def parse_record(path: Path) -> TrialRecord:
    """Read and check ``result.json``; DamagedFileError when any part of it cannot be replayed."""
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise DamagedFileError(path, f"not a JSON object but a {type(saved).__name__}")
    missing = [k for k in ("result", "rows", "artifacts") if k not in saved]
    if missing:
        raise DamagedFileError(path, f"lacks {', '.join(missing)}")
    r = saved["result"]
    return TrialRecord(
        result=_part(path, "result", lambda: TrialResult(**{**r, "status": TrialStatus(
            r["status"])})),
        rows=_part(path, "rows", lambda: [(int(s), {str(k): float(v) for k, v in m.items()})
                                          for s, m in saved["rows"]]),
        artifacts=_part(path, "artifacts", lambda: _artifacts(saved["artifacts"])),
        params=_part(path, "params", lambda: dict(saved.get("params", {}))),
        tags=_part(path, "tags", lambda: dict(saved.get("tags", {}))),
    )


WORK = "work.log"
"""Per trial, one line ``<process> <first step> <step reached>`` per checkpoint and at the end:
the steps its own processes trained (steps started from a prefix checkpoint are not theirs)."""


def log_work(ckpt_dir: Path, session: str, first: int, reached: int) -> None:
    """Append that process ``session``, which started at step ``first``, has reached step
    ``reached`` (one small append; a crash loses at most the line being written)."""
    with (ckpt_dir / WORK).open("a") as f:
        f.write(f"{session} {first} {reached}\n")


def steps_trained(ckpt_dir: Path) -> int:
    """Optimizer steps the trial's processes trained, from its work log: per process, the last
    step reached minus its first. Steps retrained after a crash count again; steps trained after
    a process's last checkpoint, before it was killed, are not counted."""
    reached: dict[tuple[str, int], int] = {}
    path = ckpt_dir / WORK
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            key = (parts[0], int(parts[1]))
            reached[key] = max(reached.get(key, 0), int(parts[2]))
    return sum(end - first for (_, first), end in reached.items())


def write_record(record: TrialRecord, ckpt_dir: Path, name: str = RESULT) -> None:
    """Write ``result.json`` (or ``name``) crash-safely (temporary file, fsync, rename)."""
    body = {"result": asdict(record.result), "rows": record.rows,
            "artifacts": record.artifacts, "params": record.params, "tags": record.tags}
    write_json_atomic(body, ckpt_dir / name)


def read_record(ckpt_dir: Path) -> TrialRecord | None:
    """The finished trial's record, or None: none yet, or a damaged one now set aside."""
    path = ckpt_dir / RESULT
    if not path.exists():
        return None
    try:
        return parse_record(path)
    except DamagedFileError as e:
        left = [p.name for p in (ckpt_dir / CKPT, ckpt_dir / PREV) if p.exists()]
        set_aside(path, e.reason, f"the trial resumes from {left[0]}" if left else
                  "the trial is trained again")
        return None


class DataChangedError(HarnessError):
    """A record or checkpoint was trained on other data than the trial now reads."""


def same_data(logged: str | None, data: TokenData, path: Path | None) -> None:
    """Refuse to replay or resume from ``path`` when it was trained on other data than the
    trial's data gives now (files rewritten under the same names, another Python's standard
    library): its curve would be reported for data it never saw. Records without a data id
    (older harness) pass."""
    now = data_sha(data.fingerprint)
    if logged is not None and logged != now:
        raise DataChangedError(
            f"{path or 'checkpoint'} was trained on data {logged}, but the trial's data now "
            f"gives {now}: move {path.parent if path else 'it'} aside to train on the new data, "
            "or restore the old data")


def clean_up(ckpt_dir: Path) -> None:
    """After ``result.json`` is written: the checkpoints (``final.pt`` and ``work.log`` stay)
    and any killed writer's temporaries."""
    for name in (CKPT, PREV):
        (ckpt_dir / name).unlink(missing_ok=True)
    for name in (CKPT, RESULT, FINAL):
        remove_temps(ckpt_dir / name)
