"""Token shards in the nanoGPT / modded-nanogpt ``.bin`` format, memory-mapped.

A shard is a 256 x int32 header (``header[0]`` magic 20240520, ``header[1]`` version 1,
``header[2]`` token count N; 1024 bytes) followed by N uint16 tokens, little-endian, as written by
modded-nanogpt's ``data/fineweb.py``.

Split of a shard folder (``*.bin`` files, sorted by name): shards whose file name contains ``val``
are held out (concatenated in name order): their last ``test_tokens`` tokens are the test stream,
the rest validation; the other shards are training. With no such file, the tail of the last
training shard is held out: ``val_tokens`` tokens of validation, then the last ``test_tokens``
tokens as test, and the rest of that shard trains.
Several training shards are concatenated once into one cached ``.npy`` (keyed by the folder's
fingerprint) so a trial memory-maps a single stream; a single shard is used in place, uncopied.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.data.cache import atomic_write, cache_key

log = logging.getLogger(__name__)

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write ``tokens`` (N,), ids in [0, 65536), as a ``.bin`` shard at ``path`` (atomically)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("token ids must be in [0, 65536) to be stored as uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)

    def write(f: IO[bytes]) -> None:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())

    atomic_write(Path(path), write)


def read_shard(path: str | Path) -> np.memmap:
    """The tokens of a ``.bin`` shard as a read-only uint16 memmap (N,); header checked."""
    path = Path(path)
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size < HEADER_INTS or header[0] != MAGIC:
        raise ValueError(f"{path}: not a token shard (magic {header[:1]}, expected {MAGIC})")
    if header[1] != VERSION:
        raise ValueError(f"{path}: shard version {header[1]}, expected {VERSION}")
    n = int(header[2])
    size = path.stat().st_size
    if size != HEADER_BYTES + 2 * n:
        raise ValueError(f"{path}: header says {n} tokens, but the file has {size} bytes")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


def shard_fingerprint(root: Path, files: list[Path]) -> dict[str, Any]:
    """Identity of a shard folder: sha256 of the listing ``name\\tsize\\n`` (contents unhashed)."""
    listing = "".join(f"{p.name}\t{p.stat().st_size}\n" for p in files)
    return {
        "corpus": "tokens",
        "root": str(root),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }


def _concat(parts: list[np.ndarray], path: Path) -> np.ndarray:
    """One stream from ``parts``: the part itself if alone, else a cached ``.npy`` memmap."""
    if len(parts) == 1:
        return parts[0]
    if not path.exists():
        n = sum(len(p) for p in parts)
        log.info("concatenating %d shards (%d tokens) into %s", len(parts), n, path)

        def write(f: IO[bytes]) -> None:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<u2", "fortran_order": False, "shape": (n,)}
            )
            for p in parts:
                f.write(np.ascontiguousarray(p, dtype="<u2").tobytes())

        atomic_write(path, write)
    return np.load(path, mmap_mode="r")


def load_shards(
    path: str | Path, val_tokens: int, test_tokens: int, cache: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(train, val, test, fingerprint) of a shard folder, split as the module docstring says."""
    root = Path(path).expanduser()
    files = sorted(root.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"data.path ({root}) holds no .bin token shards")
    val_files = [p for p in files if "val" in p.name]
    train_files = [p for p in files if "val" not in p.name]
    if not train_files:
        raise ValueError(f"data.path ({root}): every shard name contains 'val'; none to train on")
    fp = shard_fingerprint(root, files)
    train_parts = [read_shard(p) for p in train_files]
    if val_files:
        held_key = cache_key(shards=fp["sha256"], root=fp["root"], part="val")
        held = _concat([read_shard(p) for p in val_files],
                       cache / "tokens" / f"{held_key}.shards.val.npy")
        if len(held) <= test_tokens:
            raise ValueError(f"data.test_tokens ({test_tokens}) must be < the {len(held)} "
                             "tokens of the *val* shards (the test set is their tail)")
        fp["val_rule"] = f"files named *val*; test: their last {test_tokens} tokens"
        val, test = held[: len(held) - test_tokens], held[len(held) - test_tokens :]
    else:
        last, n_held = train_parts[-1], val_tokens + test_tokens
        if len(last) <= 2 * n_held:
            raise ValueError(
                f"data.val_tokens + test_tokens ({n_held}) must be < half the last shard "
                f"({len(last)} tokens) when no shard name contains 'val'"
            )
        fp["val_rule"] = f"tail of {train_files[-1].name}: val, then test"
        cut = len(last) - n_held
        train_parts[-1] = last[:cut]
        val, test = last[cut : cut + val_tokens], last[cut + val_tokens :]
    key = cache_key(shards=fp["sha256"], root=fp["root"], val_tokens=val_tokens,
                    test_tokens=test_tokens)
    train = _concat(train_parts, cache / "tokens" / f"{key}.shards.train.npy")
    return train, val, test, fp
