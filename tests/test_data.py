"""Data: every corpus loads, splits, caches and batches deterministically; synthetic entropy is
exact. Real data only (the interpreter's standard library, text folders and shards made here)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from tokenizers import Tokenizer

from harness.config import DataConfig
from harness.data import (
    TokenData,
    eval_batches,
    eval_windows,
    load_data,
    make_language,
    read_shard,
    sample_tokens,
    stdlib_files,
    synthetic_entropy,
    train_batch,
    val_batches,
    write_shard,
)
from harness.data.documents import read_documents, stdlib_root
from harness.data.splits import TEST, TRAIN, VAL, split_documents
from harness.data.synthetic import SEGMENT_TOKENS

T, B = 64, 8


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def stdlib_data(stdlib_cache: Path) -> TokenData:
    return load_data(DataConfig(), stdlib_cache)


def make_text_folder(root: Path, n: int = 40) -> Path:
    """``n`` small documents with distinct contents (no two share a word 5-gram), some in a
    subfolder."""
    for i in range(n):
        path = root / ("sub" if i % 3 == 0 else ".") / f"doc_{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        words = " ".join(f"w{i}_{(j * 7) % 50}" for j in range(200))
        path.write_text(f"document {i}\n{words}\nend of document {i}\n")
    return root


def assert_batches_deterministic(data: TokenData) -> None:
    x, y = train_batch(data, T, B, seed=0, step=3)
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.min()) >= 0 and int(y.max()) < data.vocab_size
    x2, y2 = train_batch(data, T, B, seed=0, step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, train_batch(data, T, B, seed=0, step=4)[0])
    assert not torch.equal(x, train_batch(data, T, B, seed=0, step=3, micro=1)[0])
    assert not torch.equal(x, train_batch(data, T, B, seed=1, step=3)[0])


def test_stdlib_files_skip_tests_and_sort() -> None:
    files = stdlib_files()
    root = stdlib_root()
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and len(rel) > 100
    assert all(r.endswith(".py") for r in rel)
    for r in rel:
        parts = set(r.split("/")[:-1])
        assert not parts & {"test", "tests", "idle_test", "site-packages"}, r
    assert "os.py" in rel and "json/__init__.py" in rel


def test_stdlib_load_stable_and_cached(tmp_path: Path) -> None:
    first = load_data(DataConfig(), tmp_path)
    fp = first.fingerprint
    assert fp["corpus"] == "stdlib" and fp["bytes"] > 5_000_000 and fp["files"] > 100
    n_tokens = len(first.train) + len(first.val) + len(first.test)
    assert n_tokens == fp["bytes"]  # bytes tokenizer: 1 token per byte
    assert first.vocab_size == 256 and first.entropy is None
    json.dumps(fp)
    cached = sorted((tmp_path / "tokens").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in cached]
    second = load_data(DataConfig(), tmp_path)
    assert second.fingerprint == fp
    assert sorted((tmp_path / "tokens").iterdir()) == cached
    assert [p.stat().st_mtime_ns for p in cached] == mtimes  # a hit: nothing rewritten
    assert isinstance(second.train, np.memmap)
    np.testing.assert_array_equal(first.train, second.train)
    np.testing.assert_array_equal(first.val, second.val)
    np.testing.assert_array_equal(first.test, second.test)
    assert not list(tmp_path.rglob("*.tmp"))


def _train_sha(cache: str) -> str:
    return hashlib.sha256(np.asarray(load_data(DataConfig(), cache).train).tobytes()).hexdigest()


def test_concurrent_first_loads_share_one_cache(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(3, mp_context=ctx) as pool:
        shas = list(pool.map(_train_sha, [str(tmp_path)] * 3))
    assert len(set(shas)) == 1 and shas[0] == _train_sha(str(tmp_path))
    assert not list(tmp_path.rglob("*.tmp"))
    assert len(list((tmp_path / "tokens").iterdir())) == 4  # train, val, test, meta


def test_stdlib_batches(stdlib_data: TokenData) -> None:
    assert_batches_deterministic(stdlib_data)


def test_val_batches_fixed_and_spread_over_the_stream(stdlib_data: TokenData) -> None:
    n_tokens = 5000
    batches = val_batches(stdlib_data, T, n_tokens, B)
    again = val_batches(stdlib_data, T, n_tokens, B)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(batches, again, strict=True)
    )
    x = torch.cat([b[0] for b in batches])  # (W, T)
    y = torch.cat([b[1] for b in batches])
    W = (n_tokens - 1) // T
    assert x.shape == (W, T) and all(b[0].shape[0] <= B for b in batches)
    assert torch.equal(x[:, 1:], y[:, :-1])
    val = np.asarray(stdlib_data.val, dtype=np.int64)
    starts = eval_windows(len(val), T, n_tokens)
    assert starts[0] == 0 and starts[-1] == len(val) - 1 - T  # first to last token of the split
    assert np.all(np.diff(starts) >= T)  # never overlapping: each target counted once
    assert np.ptp(np.diff(starts)) <= 1  # evenly spaced
    for w in (0, W // 2, W - 1):
        assert torch.equal(x[w], torch.from_numpy(val[starts[w] : starts[w] + T]))


def test_eval_windows_tile_a_short_stream() -> None:
    stream = np.arange(10 * T + 1, dtype=np.uint16)
    batches = eval_batches(stream, T, 10 * T + 1, B)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y.reshape(-1), torch.arange(1, 10 * T + 1))  # every target exactly once
    assert torch.equal(x.reshape(-1), torch.arange(10 * T))
    assert len(eval_batches(stream, T, 10**9, B)) == len(batches)  # capped at the stream


def test_split_by_document_disjoint_and_stable(tmp_path: Path) -> None:
    folder = make_text_folder(tmp_path / "text")
    cfg = DataConfig(corpus="text", path=str(folder), val_fraction=0.2, test_fraction=0.2)
    data = load_data(cfg, tmp_path / "cache")
    files = sorted(folder.rglob("*.txt"))
    docs = read_documents(folder, files)
    split = split_documents(docs, 0.2, 0.2, cfg.near_dup_jaccard)
    assert split.n_groups == len(docs)  # distinct documents: one group each
    assert all((split.side == s).any() for s in (TRAIN, VAL, TEST))
    again = split_documents(docs, 0.2, 0.2, cfg.near_dup_jaccard)
    np.testing.assert_array_equal(split.side, again.side)
    extra = tmp_path / "extra"
    shutil.copytree(folder, extra)
    (extra / "zzz_new.txt").write_text("a new document about something else entirely")
    more = read_documents(extra, sorted(extra.rglob("*.txt")))
    assert np.array_equal(split.side, split_documents(more, 0.2, 0.2, 0.3).side[:-1])
    for code, stream in ((TRAIN, data.train), (VAL, data.val), (TEST, data.test)):
        text = b"".join(d.data for d, s in zip(docs, split.side, strict=True) if s == code)
        assert np.asarray(stream).astype(np.uint8).tobytes() == text
    assert data.fingerprint["val_files"] == int((split.side == VAL).sum())
    assert data.fingerprint["test_files"] == int((split.side == TEST).sum())
    assert_batches_deterministic(data)


def test_bpe_on_stdlib_subset(tmp_path: Path) -> None:
    folder = tmp_path / "code"
    root = stdlib_root()
    for p in stdlib_files()[:120]:  # ~1 MB of real code
        dest = folder / p.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)
    cfg = DataConfig(
        corpus="text", path=str(folder), glob="**/*.py", tokenizer="bpe", bpe_vocab_size=512
    )
    cache = tmp_path / "cache"
    data = load_data(cfg, cache)
    assert data.vocab_size == 512 and data.fingerprint["bpe_ids"] <= 512
    assert int(np.max(data.train)) < 512 and int(np.max(data.val)) < 512
    assert data.fingerprint["bytes"] / len(data.train) > 1.5  # BPE compresses code
    (tok_file,) = (cache / "bpe").iterdir()
    tok = Tokenizer.from_file(str(tok_file))
    eot = tok.token_to_id("<|endoftext|>")
    assert int(np.sum(np.asarray(data.val) == eot)) == data.fingerprint["val_files"]
    assert int(np.sum(np.asarray(data.test) == eot)) == data.fingerprint["test_files"]
    first_doc = np.asarray(data.train[: int(np.argmax(np.asarray(data.train) == eot))])
    docs = read_documents(folder, sorted(folder.rglob("*.py")))
    split = split_documents(docs, cfg.val_fraction, cfg.test_fraction, cfg.near_dup_jaccard)
    train_docs = [d for d, s in zip(docs, split.side, strict=True) if s == TRAIN]
    assert tok.decode(first_doc.tolist()) == train_docs[0].data.decode()
    mtime = tok_file.stat().st_mtime_ns
    again = load_data(cfg, cache)
    assert again.fingerprint == data.fingerprint and tok_file.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.train, data.train)
    assert_batches_deterministic(again)


def test_shard_round_trip(tmp_path: Path) -> None:
    tokens = np.random.default_rng(0).integers(0, 65536, size=10_000)
    path = tmp_path / "train_000.bin"
    write_shard(path, tokens)
    assert path.stat().st_size == 1024 + 2 * len(tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[:3].tolist() == [20240520, 1, len(tokens)]
    read = read_shard(path)
    assert isinstance(read, np.memmap) and read.dtype == np.uint16
    np.testing.assert_array_equal(read, tokens)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 2048)
    with pytest.raises(ValueError, match="magic"):
        read_shard(bad)
    with pytest.raises(ValueError, match=r"\[0, 65536\)"):
        write_shard(tmp_path / "big.bin", np.array([70_000]))


def test_tokens_corpus_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 1000, size=n) for n in (5000, 7000, 3000)]
    named = tmp_path / "named"
    named.mkdir()
    for name, toks in zip(
        ["fineweb_train_000001", "fineweb_train_000002", "fineweb_val_000000"], parts, strict=True
    ):
        write_shard(named / f"{name}.bin", toks)
    cfg = DataConfig(corpus="tokens", path=str(named), vocab_size=1000, val_tokens=1000,
                     test_tokens=500)
    data = load_data(cfg, tmp_path / "cache")
    np.testing.assert_array_equal(data.train, np.concatenate(parts[:2]))
    np.testing.assert_array_equal(data.val, parts[2][:2500])  # the val shards' head...
    np.testing.assert_array_equal(data.test, parts[2][2500:])  # ...and their tail for test
    assert data.vocab_size == 1000 and data.fingerprint["files"] == 3
    assert_batches_deterministic(data)
    assert len(val_batches(data, T, 1000, B)) == -(-((1000 - 1) // T) // B)

    tail = tmp_path / "tail"
    tail.mkdir()
    write_shard(tail / "a.bin", parts[0])
    data = load_data(cfg.model_copy(update={"path": str(tail)}), tmp_path / "cache")
    np.testing.assert_array_equal(data.train, parts[0][:3500])
    np.testing.assert_array_equal(data.val, parts[0][3500:4500])
    np.testing.assert_array_equal(data.test, parts[0][4500:])
    assert isinstance(data.train, np.memmap)  # one shard: used in place
    other = load_data(cfg.model_copy(update={"path": str(tail), "test_tokens": 400}),
                      tmp_path / "cache")
    assert other.fingerprint["test_sha"] != data.fingerprint["test_sha"]


def test_synthetic_entropy_matches_monte_carlo() -> None:
    for vocab, order, branching in [(64, 1, 4), (12, 2, 5), (6, 3, 3)]:
        lang = make_language(vocab, order, branching, seed=3)
        segment = 40_000
        stream = sample_tokens(lang, 20 * segment, np.random.default_rng(0), segment=segment)
        nll = -np.stack([lang.log_probs(s) for s in stream.reshape(20, segment)])  # (20, L-k)
        assert np.isfinite(nll).all()  # every sampled transition is one the chain allows
        mc, se = nll.mean(), nll.mean(axis=1).std(ddof=1) / np.sqrt(20)
        assert abs(mc - lang.entropy) < 4 * se + 1e-3, (vocab, order, mc, lang.entropy, se)
        assert lang.entropy == synthetic_entropy(vocab, order, branching, seed=3)


def test_synthetic_stationary_law_against_dense_reference() -> None:
    lang = make_language(5, 2, 3, seed=1)
    C = lang.n_contexts
    P = np.zeros((C, C))  # (C, C) float64
    np.add.at(P, (np.repeat(np.arange(C), 3), lang.next_contexts().ravel()), lang.probs.ravel())
    assert (
        np.sort(lang.successors, axis=1)[:, 1:] != np.sort(lang.successors, axis=1)[:, :-1]
    ).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    pi = lang.stationary
    support = pi > 0
    assert abs(pi.sum() - 1) < 1e-12
    np.testing.assert_allclose(pi @ P, pi, atol=1e-12)
    assert P[np.ix_(support, ~support)].sum() == 0  # closed class: streams never leave it
    evals, evecs = np.linalg.eig(P[np.ix_(support, support)].T)
    ref = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
    np.testing.assert_allclose(pi[support], ref / ref.sum(), atol=1e-10)
    h = -(lang.probs * np.log(lang.probs)).sum(axis=1)
    assert lang.entropy == pytest.approx(float(pi @ h), abs=1e-12)


def test_synthetic_corpus_load(tmp_path: Path) -> None:
    cfg = DataConfig(corpus="synthetic", synthetic_vocab=64, synthetic_tokens=2_000_000)
    data = load_data(cfg, tmp_path / "a")  # its speed is not a test's business (harness bench)
    assert data.entropy == synthetic_entropy(64, 1, 4, 0) == data.fingerprint["entropy"]
    assert 0 < data.entropy < np.log(4)
    assert len(data.train) == 2_000_000 and len(data.val) == cfg.val_tokens
    assert len(data.test) == cfg.eval_test_tokens and not np.array_equal(data.test, data.val)
    assert data.vocab_size == 64 and int(np.max(data.train)) < 64
    other = load_data(cfg, tmp_path / "b")
    assert other.fingerprint["sha256"] == data.fingerprint["sha256"]
    hit = load_data(cfg, tmp_path / "a")
    assert hit.fingerprint == data.fingerprint and hit.entropy == data.entropy
    assert_batches_deterministic(hit)
    lang = make_language(64, 1, 4, 0)
    for stream in (data.val, data.test):  # 4 stationary segments of SEGMENT_TOKENS each
        segments = np.asarray(stream).reshape(-1, SEGMENT_TOKENS)
        nll = -np.concatenate([lang.log_probs(seg) for seg in segments])
        assert abs(nll.mean() - data.entropy) < 0.05


def test_synthetic_size_limit_names_the_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"synthetic_vocab \*\* synthetic_order"):
        DataConfig(corpus="synthetic", synthetic_vocab=1000, synthetic_order=2)
    DataConfig(corpus="stdlib", synthetic_vocab=1000, synthetic_order=2)  # unused: no check
