"""Splits with planted truths: near-duplicate families stay on one side, the held-out sets sample
many documents, and the data id follows the split settings (harness.data.splits)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from harness.config import DataConfig
from harness.data import eval_windows, load_data
from harness.data.documents import Document, read_documents, stdlib_documents
from harness.data.splits import TEST, TRAIN, VAL, jaccard, shingles, split_documents
from harness.store import data_sha

FAMILIES, MEMBERS, SINGLES = 6, 4, 60


def _words(rng: np.random.Generator, n: int) -> list[str]:
    return [f"t{v}" for v in rng.integers(0, 5000, size=n)]


def planted_corpus(root: Path) -> dict[str, int]:
    """SINGLES unrelated documents and FAMILIES families of MEMBERS near-copies (one base text,
    2% of its words replaced in each copy; pairwise Jaccard ~0.8), named so a split by name
    alone would scatter them. Returns {file name: family} for the family members."""
    rng = np.random.default_rng(7)
    family: dict[str, int] = {}
    for i in range(SINGLES):
        (root / f"single_{i:02d}.txt").write_text(" ".join(_words(rng, 300)))
    for f in range(FAMILIES):
        base = _words(rng, 300)
        for m in range(MEMBERS):
            copy = list(base)
            for j in rng.choice(len(copy), size=6, replace=False):
                copy[j] = f"edit{f}_{m}_{j}"
            name = f"{'abcdefgh'[m]}_member_{f}.txt"
            (root / name).write_text(" ".join(copy))
            family[name] = f
    return family


@pytest.fixture
def planted(tmp_path: Path) -> tuple[list[Document], dict[str, int]]:
    folder = tmp_path / "planted"
    folder.mkdir()
    family = planted_corpus(folder)
    return read_documents(folder, sorted(folder.glob("*.txt"))), family


def test_near_duplicate_families_land_on_one_side(
    planted: tuple[list[Document], dict[str, int]],
) -> None:
    docs, family = planted
    split = split_documents(docs, 0.25, 0.25, 0.3)
    side = {d.name: int(s) for d, s in zip(docs, split.side, strict=True)}
    for f in range(FAMILIES):
        members = [n for n, g in family.items() if g == f]
        assert len({side[n] for n in members}) == 1, (f, [side[n] for n in members])
    assert split.near_dup_groups == FAMILIES
    held_out_families = {side[n] for n in family} - {TRAIN}
    assert held_out_families, "no family was held out: the check above proves nothing"
    sets = [shingles(d.data) for d in docs]
    for i, j in itertools.combinations(range(len(docs)), 2):  # every pair, exactly
        if split.side[i] != split.side[j]:
            assert jaccard(sets[i], sets[j]) < 0.3, (docs[i].name, docs[j].name)
    # the same corpus split document by document (only identical shingle sets group) scatters
    # some family across sides: the planted families are a real test
    loose = split_documents(docs, 0.25, 0.25, 1.0)
    loose_side = {d.name: int(s) for d, s in zip(docs, loose.side, strict=True)}
    assert any(len({loose_side[n] for n, g in family.items() if g == f}) > 1
               for f in range(FAMILIES))


def test_split_is_disjoint_and_a_pure_function(
    planted: tuple[list[Document], dict[str, int]],
) -> None:
    docs, _ = planted
    split = split_documents(docs, 0.25, 0.25, 0.3)
    names = {s: {d.name for d, x in zip(docs, split.side, strict=True) if x == s}
             for s in (TRAIN, VAL, TEST)}
    assert all(names.values()) and sum(map(len, names.values())) == len(docs)
    assert not (names[TRAIN] & names[VAL] or names[TRAIN] & names[TEST] or
                names[VAL] & names[TEST])
    again = split_documents(list(docs), 0.25, 0.25, 0.3)
    np.testing.assert_array_equal(split.side, again.side)
    np.testing.assert_array_equal(split.group, again.group)


@pytest.fixture(scope="module")
def stdlib_split() -> tuple[list[Document], np.ndarray]:
    cfg = DataConfig()
    _, docs = stdlib_documents()
    split = split_documents(docs, cfg.val_fraction, cfg.test_fraction, cfg.near_dup_jaccard)
    return docs, split.side


def test_stdlib_codec_families_do_not_straddle_the_split(
    stdlib_split: tuple[list[Document], np.ndarray],
) -> None:
    docs, side = stdlib_split
    enc = [i for i, d in enumerate(docs) if d.name.startswith("encodings/cp")]
    sets = {i: shingles(docs[i].data) for i in enc}
    for i, j in itertools.combinations(enc, 2):
        if side[i] != side[j]:
            assert jaccard(sets[i], sets[j]) < 0.5, (docs[i].name, docs[j].name)
    held = [d for d, s in zip(docs, side, strict=True) if s != TRAIN]
    enc_bytes = sum(len(d.data) for d in held if d.name.startswith("encodings/"))
    assert enc_bytes < 0.15 * sum(len(d.data) for d in held)  # was 135 KB of a 1.22 MB val


def test_stdlib_eval_windows_sample_many_documents(
    tmp_path: Path, stdlib_split: tuple[list[Document], np.ndarray],
) -> None:
    docs, side = stdlib_split
    cfg = DataConfig()
    data = load_data(cfg, tmp_path)
    assert cfg.val_tokens >= 262_144 and cfg.eval_test_tokens >= 262_144
    for code, stream in ((VAL, data.val), (TEST, data.test)):
        lengths = [len(d.data) for d, s in zip(docs, side, strict=True) if s == code]
        assert sum(lengths) == len(stream) >= cfg.val_tokens  # bytes: one token per byte
        ends = np.cumsum(lengths)
        starts = eval_windows(len(stream), 256, cfg.val_tokens)  # (W,)
        hit = np.unique(np.searchsorted(ends, starts, side="right"))
        assert len(lengths) >= 20 and len(hit) >= 0.75 * len(lengths), (len(hit), len(lengths))
        assert hit[-1] == len(lengths) - 1  # the windows reach the last document
        assert len(starts) * 256 >= 0.99 * cfg.val_tokens


def test_data_id_and_cache_follow_the_split_settings(tmp_path: Path) -> None:
    folder = tmp_path / "planted"
    folder.mkdir()
    planted_corpus(folder)
    base = DataConfig(corpus="text", path=str(folder), val_fraction=0.25, test_fraction=0.25,
                      val_tokens=512)
    cache = tmp_path / "cache"
    first = load_data(base, cache)
    ids = {data_sha(first.fingerprint)}
    for change in ({"test_fraction": 0.3}, {"val_fraction": 0.2}, {"near_dup_jaccard": 1.0}):
        other = load_data(base.model_copy(update=change), cache)
        assert other.fingerprint["cache_key"] != first.fingerprint["cache_key"], change
        ids.add(data_sha(other.fingerprint))
    assert len(ids) == 4  # each split setting gives its own data id
    fp = first.fingerprint
    assert {"val_sha", "test_sha", "val_files", "test_files", "groups"} <= fp.keys()
    assert fp["val_sha"] != fp["test_sha"]
    again = load_data(base, cache)  # a cache hit: the same split, the same id
    assert again.fingerprint == fp
    np.testing.assert_array_equal(again.test, first.test)
