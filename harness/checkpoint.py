"""Crash-safe writes and checked reads of checkpoints and trial records.

Writes: a temporary file of this writer's own (``<name>.<pid>.<random>.tmp`` next to the
target), fsync, rename over the target, fsync of the folder. A crash or a full disk mid-write
leaves the previous file intact and no torn one in its place; two writers of one target never
share a temporary file, so neither can rename the other's away; the target is one whole write.

Reads: a checkpoint is checked (a complete zip archive whose every member matches its CRC) before
``torch.load(weights_only=True)``. A damaged file is not an error that repeats on every resume:
``set_aside`` renames it to ``<name>.damaged-<time>`` with one warning line, and the caller goes
on from the previous good state. A whole archive that holds pickled objects other than tensors
is not damage: it is refused (``UnsafeCheckpointError``), kept for a person to look at, never run.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import pickle
import secrets
import shutil
import time
import zipfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.config.errors import HarnessError

log = logging.getLogger(__name__)

STALE_TEMP_S = 3600.0  # a temporary file untouched this long is a killed writer's, not a live one


class DamagedFileError(Exception):
    """A checkpoint or record that cannot be read back; ``reason`` says why, in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class UnsafeCheckpointError(HarnessError, pickle.UnpicklingError):
    """A whole checkpoint holding pickled objects that ``weights_only`` refuses to build."""


class SetAsideError(HarnessError, OSError):
    """A damaged file that could not be renamed out of the way."""


# writes ----------------------------------------------------------------------------------------

class _WriteAll:
    """Sink for torch.save: each write completes or raises OSError (ENOSPC, EFBIG), where a
    Python file's short write would surface as torch's opaque "unexpected pos" RuntimeError."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self.fd, view) :]
        return total

    def flush(self) -> None:
        pass


def _temp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create a temporary file next to ``path`` that no other writer has (O_EXCL)."""
    while True:
        tmp = _temp_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp
        except FileExistsError:
            continue


def fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable; a filesystem that cannot fsync a folder is let be."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _replace_durably(
    path: Path, write: Callable[[int], None], previous: Path | None = None
) -> None:
    """Write a temporary file with ``write(fd)``, fsync it, (keep the old ``path`` as
    ``previous``,) rename it over ``path`` and fsync the folder. The temporary file never
    outlives a failure, whatever the exception."""
    fd, tmp = _open_temp(path)
    try:
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        if previous is not None:
            # FileNotFoundError: the first save, or another writer moved it just now
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_error(what: str, path: Path, e: BaseException) -> OSError | None:
    """The OSError behind ``e`` as one that names ``path`` and the free space; None if none is."""
    # torch.save's zip writer turns a failed write into a RuntimeError as it closes.
    cause = e if isinstance(e, OSError) else e.__context__
    if not isinstance(cause, OSError):
        return None
    free = shutil.disk_usage(path.parent).free / 2**20
    return OSError(cause.errno,
                   f"cannot write {what}{path}: {cause.strerror} ({free:.1f} MiB free)")


def save_atomic(obj: Any, path: Path, previous: Path | None = None) -> None:
    """torch.save durably and atomically: a crash never leaves a torn checkpoint.

    With ``previous``, the checkpoint being replaced is kept under that name (one rename), so a
    checkpoint damaged later on disk still has a good one before it. A failed write (full disk,
    file-size limit) removes the partial file, which would keep the disk full, and raises OSError
    naming the checkpoint and the free space left.
    """
    try:
        _replace_durably(path, lambda fd: torch.save(obj, _WriteAll(fd)), previous)
    except (OSError, RuntimeError) as e:
        err = _write_error("checkpoint ", path, e)
        if err is None:
            raise
        raise err from e


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON durably and atomically (the same steps as ``save_atomic``); a failed
    write raises OSError naming ``path`` and the free space left."""
    data = json.dumps(obj, indent=1).encode()

    def write(fd: int) -> None:
        _WriteAll(fd).write(data)

    try:
        _replace_durably(path, write)
    except OSError as e:
        err = _write_error("", path, e)
        assert err is not None
        raise err from e


def remove_temps(path: Path, older_than: float | None = None) -> None:
    """Remove temporary files that writers of ``path`` left behind (killed mid-write); with
    ``older_than`` (seconds), only those untouched that long, since a live writer's is fresh."""
    now = time.time()
    pattern = glob.escape(path.name) + ".*.tmp"
    for tmp in [*path.parent.glob(pattern), path.with_name(path.name + ".tmp")]:
        try:
            if older_than is None or now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
        except FileNotFoundError:
            pass


# reads -----------------------------------------------------------------------------------------

def set_aside(path: Path, reason: str, then: str) -> Path:
    """Rename a damaged file to ``<name>.damaged-<time>`` next to it and log one warning line:
    the file, ``reason`` and ``then`` (what the trial does next). Returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    try:
        os.rename(path, aside)
        fsync_dir(path.parent)
    except OSError as e:
        raise SetAsideError(
            e.errno, f"damaged {path} ({reason}) could not be set aside: {e.strerror}; move or "
            "delete it by hand, then resume") from e
    log.warning("damaged %s (%s): set aside as %s (inspect or delete it); %s",
                path, reason, aside.name, then)
    return aside


def _check_archive(path: Path) -> None:
    """DamagedFileError unless ``path`` is a complete zip whose members all match their CRC."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except OSError:
        raise  # the disk, not the file's bytes: said as it is
    except Exception as e:  # BadZipFile, EOFError, zlib.error ...: any archive that cannot parse
        size = path.stat().st_size
        raise DamagedFileError(path, f"not a complete checkpoint archive, {size} bytes: "
                                     "truncated, zeroed or overwritten") from e
    if bad is not None:
        raise DamagedFileError(path, f"checksum mismatch in {bad}: bytes changed after the save")


def _refusal(path: Path, e: pickle.UnpicklingError) -> UnsafeCheckpointError:
    """torch's weights-only refusal, said in one line that names the file and runs nothing."""
    detail = [ln.strip() for ln in str(e).splitlines()
              if ln.strip() and not ln.startswith(("Weights only load failed", "Check the doc"))]
    what = detail[0] if detail else "an object that is not a tensor"
    return UnsafeCheckpointError(
        f"checkpoint {path} was refused (Weights only load failed: {what}): a whole archive "
        "holding pickled objects the harness never writes; nothing in it was run. If you do not "
        "know where it came from, treat it as tampering; once it is deleted the trial resumes from "
        "the checkpoint before it, or from step 0")


def read_checkpoint(
    path: Path, keys: Collection[str], map_location: torch.device | str | None = None
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` after checking it is whole.

    Raises DamagedFileError (not an archive, a CRC mismatch, unreadable, not a dict with ``keys``),
    or UnsafeCheckpointError for a whole archive that holds pickled objects.
    """
    _check_archive(path)
    try:
        state = torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from e
    except (RuntimeError, EOFError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedFileError(path, f"unreadable by torch.load: {first[:200]}") from e
    if not isinstance(state, dict):
        raise DamagedFileError(path, f"holds a {type(state).__name__}, not a checkpoint")
    missing = [k for k in keys if k not in state]
    if missing:
        raise DamagedFileError(path, f"lacks {', '.join(missing)}: not this trainer's checkpoint")
    return state


def load_latest(
    paths: Sequence[Path], keys: Collection[str], map_location: torch.device | str | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """The first of ``paths`` (newest first) that reads back whole, with its state; each damaged
    one on the way is set aside. None when none is left: the trial starts from step 0."""
    for i, path in enumerate(paths):
        if not path.exists():
            continue
        try:
            return path, read_checkpoint(path, keys, map_location)
        except DamagedFileError as e:
            rest = [p for p in paths[i + 1 :] if p.exists()]
            then = f"the trial resumes from {rest[0].name}" if rest else \
                "the trial restarts from step 0"
            set_aside(path, e.reason, then)
    return None


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; DamagedFileError when it is not JSON (torn, binary, empty)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFileError(path, f"not JSON: {e}") from e
