"""Crash-safe writes of checkpoints and trial records: temporary file, fsync, then rename.

A crash or a full disk mid-write leaves the previous file intact and no torn one behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


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


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a torn checkpoint.

    A failed write (full disk, file-size limit) removes the partial file, which would keep the
    disk full, and raises OSError naming the checkpoint and the free space left.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            torch.save(obj, _WriteAll(fd))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        # torch.save's zip writer turns a failed write into a RuntimeError as it closes.
        cause = e if isinstance(e, OSError) else e.__context__
        if not isinstance(cause, OSError):
            raise
        free = shutil.disk_usage(path.parent).free / 2**20
        raise OSError(
            cause.errno, f"cannot write checkpoint {path}: {cause.strerror} ({free:.1f} MiB free)"
        ) from e


def write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


