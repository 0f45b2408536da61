"""On-disk cache of tokenized corpora and tokenizers, safe for concurrent trial processes.

Layout under the cache root (argument, else ``$HARNESS_CACHE``, else ``~/.cache/k2-harness``)::

    tokens/{key}.{train,val,test}.npy  tokens/{key}.json   # uint16 streams + metadata
    bpe/{key}.json                                                    # trained tokenizers

Every write goes to a unique temporary file in the same folder and is then ``os.replace``-d into
place, so a reader sees either nothing or a whole file. The metadata JSON is written last: an entry
counts as present only when its JSON exists. Readers memory-map the arrays (``mmap_mode="r"``), so
trials on one machine share the page cache instead of each holding a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

CACHE_VERSION = 2
"""Bump when the tokenization or split rules change, so old entries are never reused
(2: validation *and* test splits, near-duplicate groups)."""

STREAMS = ("train", "val", "test")
"""The token streams of a cached corpus."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else env ``HARNESS_CACHE``, else ``~/.cache/k2-harness``."""
    chosen = cache_dir or os.environ.get("HARNESS_CACHE") or "~/.cache/k2-harness"
    return Path(chosen).expanduser()


def cache_key(**settings: Any) -> str:
    """16-hex key of JSON-able settings (with :data:`CACHE_VERSION` mixed in)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (no ``.npy`` suffix is appended)."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def load_streams(root: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Cached ({stream: tokens} for :data:`STREAMS`, meta) for ``key`` as read-only memmaps, or
    None on a miss."""
    folder = root / "tokens"
    meta_path = folder / f"{key}.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    streams = {s: np.load(folder / f"{key}.{s}.npy", mmap_mode="r") for s in STREAMS}
    return streams, meta


def save_streams(
    root: Path, key: str, streams: dict[str, np.ndarray], meta: dict[str, Any]
) -> None:
    """Store the uint16 :data:`STREAMS` and their metadata under ``key`` (metadata last)."""
    folder = root / "tokens"
    for s in STREAMS:
        atomic_save_npy(folder / f"{key}.{s}.npy", np.ascontiguousarray(streams[s], np.uint16))
    atomic_write_text(folder / f"{key}.json", json.dumps(meta, indent=1, sort_keys=True))
