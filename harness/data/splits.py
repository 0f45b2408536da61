"""Train / validation / test split of a document corpus, near-duplicates kept on one side.

A document's side is the side of its *group*, and a group is a family of near-duplicate
documents, so no near-duplicate pair straddles the split (the standard library's codec tables,
``encodings/cp*.py``, are such families):

1. Shingles: the set of word 5-grams of a document (a word is a maximal run of non-whitespace
   bytes, hashed by crc32; a 5-gram hashes its five word hashes folded through murmur3's 64-bit
   finalizer ``fmix64``). A document of fewer than 5 words has its words as shingles.
2. MinHash signatures (Broder 1997, "On the resemblance and containment of documents"):
   ``MINHASH_PERMUTATIONS`` hash functions ``h_p(x) = a_p * x + b_p mod 2**64`` of the (already
   fmix64-mixed) shingle hashes x (odd ``a_p``: multiply-add hashing, Dietzfelbinger et al.
   1997), each document's minimum per
   function; two documents agree on one with probability ~ their Jaccard similarity J.
3. Candidate pairs by LSH banding (Indyk & Motwani 1998; Leskovec, Rajaraman & Ullman, *Mining of
   Massive Datasets*, sec. 3.4): ``LSH_BANDS`` bands of ``MINHASH_PERMUTATIONS / LSH_BANDS``
   rows; documents equal on any band are candidates, so a pair of Jaccard J is found with
   probability ``1 - (1 - J**r)**b`` (r = 2, b = 32: 0.95 at J = 0.3, 0.9999 at J = 0.5).
4. A candidate pair whose exact shingle-set Jaccard is >= ``near_dup_jaccard`` is joined
   (union-find); groups are the connected components (single linkage), so a family stays whole
   even where two of its members differ more than the threshold.
5. Sides, by hash: a group's fraction ``u = hash_fraction(first document name)`` makes it
   validation when ``u < val_fraction``, test when ``val_fraction <= u < val_fraction +
   test_fraction``, else training. A group holding more than ``HELDOUT_GROUP_SHARE`` of a held-out
   side's expected bytes (``fraction x corpus bytes``) trains instead: one family or one huge
   file would otherwise be most of that side (the standard library's 750 KB
   ``pydoc_data/topics.py``, its 450 KB family of cp437-style code pages). A side left empty
   (tiny corpora) takes one group from the side with the most, so every side holds one. A corpus
   of fewer than 3 groups (near-copies only) is split by document instead, with a warning.

The split is a pure function of the documents (names and bytes) and the three settings: the same
on every machine, seed and tokenizer. A document keeps its side when others are added unless it
joins or leaves a family (or the corpus grows enough to move the size cap). Python 3.11's
standard library (734 files, 12 MB): ~0.7 s, 633 groups, 13 of them families (mostly code
pages); validation 33 files (371 KB), test 36 (494 KB).
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from harness.data.documents import Document, hash_fraction

log = logging.getLogger(__name__)

SHINGLE_WORDS = 5
"""Words per shingle."""
MINHASH_PERMUTATIONS = 64
"""Hash functions per MinHash signature."""
LSH_BANDS = 32
"""LSH bands (of MINHASH_PERMUTATIONS / LSH_BANDS rows each)."""
HELDOUT_GROUP_SHARE = 0.25
"""Largest share of a held-out side's expected bytes one group may take; bigger groups train."""
TRAIN, VAL, TEST = 0, 1, 2
"""Side codes of :class:`Split`."""

_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer (Appleby 2011), elementwise on uint64 (wrapping)."""
    x = x ^ (x >> _S33)
    x = x * _M1
    x = x ^ (x >> _S33)
    x = x * _M2
    return x ^ (x >> _S33)


def shingles(data: bytes, k: int = SHINGLE_WORDS) -> np.ndarray:
    """Sorted unique uint64 hashes of the word k-grams of ``data`` (its words when fewer)."""
    words = np.fromiter(map(zlib.crc32, data.split()), dtype=np.uint64)  # (n_words,)
    if len(words) < k:
        return np.unique(fmix64(words))
    n = len(words) - k + 1
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        acc = fmix64(acc ^ words[j : j + n])
    return np.unique(acc)


def _hash_family(p: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint64 (P,) of the MinHash functions; a odd. Fixed: part of the split rule."""
    rng = np.random.Generator(np.random.PCG64(20240520))
    a = rng.integers(0, 2**63, size=p, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=p, dtype=np.uint64)
    return a, b


def minhash(sets: list[np.ndarray], p: int = MINHASH_PERMUTATIONS) -> np.ndarray:
    """MinHash signatures (N, P) uint64 of shingle sets; an empty set's row is all 2**64 - 1."""
    a, b = _hash_family(p)
    sig = np.full((len(sets), p), np.iinfo(np.uint64).max, dtype=np.uint64)
    for i, s in enumerate(sets):
        if len(s):
            sig[i] = (s[:, None] * a + b).min(axis=0)  # shingles are fmix64 outputs
    return sig


def candidate_pairs(sig: np.ndarray, bands: int = LSH_BANDS) -> set[tuple[int, int]]:
    """Pairs (i < j) of rows of ``sig`` (N, P) equal on at least one band of P / bands columns."""
    rows = sig.shape[1] // bands
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, key in enumerate(sig[:, band * rows : (band + 1) * rows]):
            buckets[key.tobytes()].append(i)
        for members in buckets.values():
            pairs.update((m, n) for k, m in enumerate(members) for n in members[k + 1 :])
    return pairs


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique arrays (two empty sets: 1)."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def near_duplicate_groups(docs: list[Document], threshold: float) -> np.ndarray:
    """Group id (N,) int64 of each document: the index of its family's first document."""
    sets = [shingles(d.data) for d in docs]
    parent = list(range(len(docs)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in sorted(candidate_pairs(minhash(sets))):
        if find(i) != find(j) and jaccard(sets[i], sets[j]) >= threshold:
            hi, lo = sorted((find(i), find(j)), reverse=True)
            parent[hi] = lo
    return np.array([find(i) for i in range(len(docs))], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Split:
    """Where each document of a corpus goes."""

    side: np.ndarray  # (N,) int8: TRAIN, VAL or TEST
    group: np.ndarray  # (N,) int64: index of the first document of its near-duplicate group

    @property
    def n_groups(self) -> int:
        return len(np.unique(self.group))

    @property
    def near_dup_groups(self) -> int:
        """Groups of more than one document."""
        return int((np.bincount(self.group) > 1).sum())


def split_documents(
    docs: list[Document], val_fraction: float, test_fraction: float, near_dup_jaccard: float
) -> Split:
    """The split of ``docs`` (sorted by name, as the corpora give them); see the module doc."""
    if len(docs) < 3:
        raise ValueError(f"a document corpus needs >= 3 files for a train/val/test split, got "
                         f"{[d.name for d in docs]}")
    group = near_duplicate_groups(docs, near_dup_jaccard)
    heads = np.unique(group)  # (G,) first document of each group
    if len(heads) < 3:
        log.warning("the %d documents form only %d near-duplicate groups: split by document "
                    "instead, so held-out documents have near-copies in training", len(docs),
                    len(heads))
        group = np.arange(len(docs))
        heads = group
    size = np.bincount(group, weights=[len(d.data) for d in docs], minlength=len(docs))[heads]
    u = np.array([hash_fraction(docs[h].name) for h in heads])  # (G,)
    total = float(size.sum())
    limit = {TRAIN: np.inf, VAL: HELDOUT_GROUP_SHARE * val_fraction * total,
             TEST: HELDOUT_GROUP_SHARE * test_fraction * total}
    side_of = np.full(len(heads), TRAIN, dtype=np.int8)  # (G,)
    for side, lo, frac in ((VAL, 0.0, val_fraction), (TEST, val_fraction, test_fraction)):
        side_of[(size <= limit[side]) & (u >= lo) & (u < lo + frac)] = side
    for side in (TRAIN, VAL, TEST):
        if not (side_of == side).any():
            _fill(side_of, side, u, size <= limit[side])
    side = side_of[np.searchsorted(heads, group)]  # (N,)
    return Split(side, group)


def _fill(side_of: np.ndarray, side: int, u: np.ndarray, fits: np.ndarray) -> None:
    """Give the empty ``side`` one group from the side with the most groups (>= 2 of them, as
    there are >= 3 groups and one side is empty): the one whose ``u`` is nearest the empty
    side's range (smallest for held-out sides, largest for training), preferring groups that
    ``fits`` (G,) marks as small enough."""
    counts = np.bincount(side_of, minlength=3)
    donor = side_of == int(np.argmax(counts))
    pool = np.flatnonzero(donor & fits) if (donor & fits).any() else np.flatnonzero(donor)
    pick = pool[np.argmax(u[pool])] if side == TRAIN else pool[np.argmin(u[pool])]
    side_of[pick] = side
