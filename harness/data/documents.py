"""Document corpora: the Python standard library (the default) and a folder of text files.

A corpus is an ordered list of :class:`Document` (relative POSIX path, raw bytes), sorted by path.
Its fingerprint names what was read, so a logged run says exactly which text it trained on::

    sha256 = sha256("".join(f"{path}\\t{size}\\t{sha256(content)}\\n" for each document))

(the listing of relative paths and sizes, plus each file's content hash, so an edit that keeps a
file's size still changes the fingerprint; hashing 12 MB costs ~10 ms).

The train / validation / test split, by near-duplicate group with each group's side from
:func:`hash_fraction` of its first document's path, is :mod:`harness.data.splits`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
"""Folder names never entered when collecting the standard library (tests and installed code)."""


@dataclass(frozen=True)
class Document:
    """One file of a corpus: its path relative to the corpus root (POSIX) and its raw bytes."""

    name: str
    data: bytes


def stdlib_root() -> Path:
    """The running interpreter's standard library folder (``sysconfig`` ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """``*.py`` files of the standard library, sorted by relative path.

    Skips any folder named in :data:`STDLIB_SKIP_DIRS` (``test/``, ``tests/``,
    ``idlelib/idle_test``, ``lib2to3/tests``, ``site-packages``, ...).
    """
    base = Path(root) if root is not None else stdlib_root()
    found: list[Path] = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d not in STDLIB_SKIP_DIRS]
        found.extend(Path(folder) / f for f in files if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def read_documents(root: Path, files: list[Path]) -> list[Document]:
    """Read ``files`` (under ``root``) as documents named by relative POSIX path, sorted."""
    docs = [Document(p.relative_to(root).as_posix(), p.read_bytes()) for p in files]
    return sorted(docs, key=lambda d: d.name)


def stdlib_documents() -> tuple[Path, list[Document]]:
    """The standard library corpus: its root and its documents."""
    root = stdlib_root()
    return root, read_documents(root, stdlib_files(root))


def text_documents(path: str | Path, pattern: str) -> tuple[Path, list[Document]]:
    """Files under ``path`` matching the glob ``pattern`` (``**`` recurses), as documents."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.path ({root}) is not a folder")
    files = [p for p in root.glob(pattern) if p.is_file()]
    if not files:
        raise FileNotFoundError(f"data.glob ({pattern!r}) matches no files under {root}")
    return root, read_documents(root, files)


def fingerprint(corpus: str, root: Path, docs: list[Document]) -> dict[str, Any]:
    """JSON-able identity of a document corpus: corpus, root, files, bytes, sha256."""
    listing = hashlib.sha256()
    for d in docs:
        listing.update(f"{d.name}\t{len(d.data)}\t{hashlib.sha256(d.data).hexdigest()}\n".encode())
    fp: dict[str, Any] = {
        "corpus": corpus,
        "root": str(root),
        "files": len(docs),
        "bytes": sum(len(d.data) for d in docs),
        "sha256": listing.hexdigest(),
    }
    if corpus == "stdlib":
        fp["python"] = sys.version.split()[0]
    return fp


def hash_fraction(name: str) -> float:
    """``sha256(name)``'s first 8 bytes as a fraction in [0, 1)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64
