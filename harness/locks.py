"""Advisory file locks: one driver per sweep, one first-time set-up per MLflow store.

Locks are ``fcntl.flock`` on a file that stays in place; the kernel drops a lock when its holder
exits in any way (SIGKILL included), so a lock is never stale and needs no clean-up. The file
holds who took it (pid, host, time) so that a refusal can say so. ``flock`` works across the
processes of one machine and on local disks; on a shared cluster file system it may not, which
``docs/cluster.md`` notes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from harness.config import HarnessError


class BusyError(HarnessError):
    """Another live process holds the lock (one line: who, since when)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("time", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {since}"


@contextlib.contextmanager
def exclusive(path: Path, busy: str = "{holder} holds it", wait: bool = False) -> Iterator[None]:
    """Hold the lock at ``path`` for the block. ``wait=False``: when it is taken, raise
    :class:`BusyError` with ``busy`` (``{holder}`` becomes who holds it); ``wait=True``: block
    until it is free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise BusyError(busy.format(holder=_holder(path))) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        os.write(fd, json.dumps(info).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock at ``path`` (False when there is no such file)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep_lock_path(storage: Path, name: str) -> Path:
    """The lock a submit or resume of sweep ``name`` holds while it drives the sweep."""
    return storage / "locks" / f"{name}.lock"
