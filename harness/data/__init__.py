"""Training data: corpora, tokenizers, cached token streams and deterministic batches.

Corpora (``DataConfig.corpus``):

- ``stdlib`` (default): the running interpreter's standard library ``*.py`` files, tests and
  ``site-packages`` excluded (:mod:`harness.data.documents`), ~12 MB of real code, no download;
- ``text``: files matching ``DataConfig.glob`` under ``DataConfig.path``;
- ``tokens``: nanoGPT / modded-nanogpt ``.bin`` shards, memory-mapped (:mod:`harness.data.shards`);
- ``synthetic``: a sparse random Markov chain with an exactly known entropy rate
  (:mod:`harness.data.synthetic`), for checking fitted irreducible losses.

Document corpora are split into train / validation / test by near-duplicate group
(:mod:`harness.data.splits`: MinHash over word 5-grams, whole groups assigned by hash), tokenized
with ``bytes`` or ``bpe`` (:mod:`harness.data.tokenize`, BPE trained on the training split only)
and cached as uint16 ``.npy`` streams keyed by the corpus fingerprint, split settings and
tokenizer settings (:mod:`harness.data.cache`), so a second trial only memory-maps them. Token
shards hold out a tail for validation and test (:mod:`harness.data.shards`); the synthetic corpus
samples a fresh stream for each. The fingerprint names both held-out streams (``val_sha``,
``test_sha``: sha256 of their tokens), so changing the split changes the data id ``data_sha``.

Batches are pure functions of their arguments: training windows of T + 1 tokens start at offsets
drawn by ``np.random.Generator(PCG64([seed, step, micro]))``, so the same seed gives the same
batches on any machine, and resuming needs nothing but the step counter. Evaluation sets are fixed:
W = (min(n_tokens, N) - 1) // T windows of T + 1 tokens of a held-out stream of N tokens, spread
evenly over the whole stream (window i starts at ``i * (N - 1 - T) // (W - 1)``), so they sample
every part of the split, not its first documents; they never overlap, and when ``n_tokens`` >= N
they tile the stream with stride T (each token after the first a target exactly once).
Validation (``val_tokens``) is for selection, test (``test_tokens``) for the numbers reported.

Shapes: B batch (sequences), T sequence length (tokens), W validation windows.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import DataConfig
from harness.data.cache import cache_key, cache_root, load_streams, save_streams
from harness.data.documents import (
    Document,
    fingerprint,
    stdlib_documents,
    stdlib_files,
    text_documents,
)
from harness.data.shards import load_shards, read_shard, write_shard
from harness.data.splits import TEST, TRAIN, VAL, split_documents
from harness.data.synthetic import (
    DIRICHLET_ALPHA,
    SEGMENT_TOKENS,
    ZIPF_EXPONENT,
    MarkovLanguage,
    TopicLanguage,
    make_language,
    make_topics,
    sample_documents,
    sample_tokens,
    synthetic_entropy,
)
from harness.data.tokenize import cached_bpe, encode_bpe, encode_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TokenData:
    """Token streams of one corpus, ready for batching."""

    train: np.ndarray  # (N_train,) integer tokens (uint16; often a read-only memmap)
    val: np.ndarray  # (N_val,) integer tokens: selection (learning rates, early looks)
    vocab_size: int  # ids are in [0, vocab_size): the model's vocabulary (DataConfig.n_vocab)
    fingerprint: dict[str, Any]  # JSON-able: corpus, files, bytes, sha256, splits, tokenizer...
    entropy: float | None = None  # nats per token; synthetic corpus only
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))  # (N_test,): the
    # numbers reported


def stream_sha(tokens: np.ndarray) -> str:
    """16-hex sha256 of a token stream's uint16 bytes: the identity of a held-out split."""
    blob = np.ascontiguousarray(tokens, dtype=np.uint16).tobytes()
    return hashlib.sha256(blob).hexdigest()[:16]


def split_ids(fp: dict[str, Any]) -> dict[str, str]:
    """The held-out splits' ids of a fingerprint, as the trial logs them as params."""
    return {k: str(fp[k]) for k in ("val_sha", "test_sha") if k in fp}


def load_data(cfg: DataConfig, cache_dir: str | Path | None = None) -> TokenData:
    """Load (tokenizing and caching on first use) the corpus ``cfg`` describes.

    ``cache_dir`` defaults to env ``HARNESS_CACHE``, else ``~/.cache/k2-harness``.
    """
    t0 = time.perf_counter()
    root = cache_root(cache_dir)
    if cfg.corpus == "tokens":
        assert cfg.path is not None  # DataConfig guarantees it
        train, val, test, fp = load_shards(cfg.path, cfg.val_tokens, cfg.eval_test_tokens, root)
        fp |= {"train_tokens": len(train), "val_tokens": len(val), "test_tokens": len(test),
               "val_sha": stream_sha(val), "test_sha": stream_sha(test)}
        data = TokenData(train, val, cfg.n_vocab, fp, test=test)
    elif cfg.corpus == "synthetic":
        data = _load_synthetic(cfg, root)
    else:
        data = _load_documents(cfg, root)
    log.info(
        "data %s: %d train / %d val / %d test tokens, vocab %d, in %.2fs",
        cfg.corpus,
        len(data.train),
        len(data.val),
        len(data.test),
        data.vocab_size,
        time.perf_counter() - t0,
    )
    return data


def _split_settings(cfg: DataConfig) -> dict[str, Any]:
    return {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
            "near_dup_jaccard": cfg.near_dup_jaccard}


def _load_documents(cfg: DataConfig, root: Path) -> TokenData:
    """stdlib / text corpora: read, fingerprint, split by group, tokenize (or hit the cache)."""
    if cfg.corpus == "stdlib":
        base, docs = stdlib_documents()
    else:
        assert cfg.path is not None  # DataConfig guarantees it
        base, docs = text_documents(cfg.path, cfg.glob)
    corpus_fp = fingerprint(cfg.corpus, base, docs)
    settings: dict[str, Any] = {
        "corpus_sha256": corpus_fp["sha256"],
        "tokenizer": cfg.tokenizer,
        **_split_settings(cfg),
    }
    if cfg.tokenizer == "bpe":
        settings["bpe_vocab_size"] = cfg.bpe_vocab_size
    key = cache_key(**settings)
    hit = load_streams(root, key)
    if hit is not None:
        streams, meta = hit
        log.info("tokens from cache %s", key)
        return _documents_data(cfg, streams, corpus_fp | meta)

    split = split_documents(docs, cfg.val_fraction, cfg.test_fraction, cfg.near_dup_jaccard)
    parts = {name: [d for d, s in zip(docs, split.side, strict=True) if s == code]
             for name, code in (("train", TRAIN), ("val", VAL), ("test", TEST))}
    meta: dict[str, Any] = {
        "tokenizer": cfg.tokenizer,
        **_split_settings(cfg),
        "groups": split.n_groups,
        "near_dup_groups": split.near_dup_groups,
        **{f"{name}_files": len(part) for name, part in parts.items()},
        "cache_key": key,
    }
    streams = _tokenize(cfg, parts, corpus_fp["sha256"], root, meta)
    meta |= {f"{name}_tokens": len(s) for name, s in streams.items()}
    meta |= {"val_sha": stream_sha(streams["val"]), "test_sha": stream_sha(streams["test"])}
    save_streams(root, key, streams, meta)
    return _documents_data(cfg, streams, corpus_fp | meta)


def _documents_data(cfg: DataConfig, streams: dict[str, np.ndarray],
                    fp: dict[str, Any]) -> TokenData:
    return TokenData(streams["train"], streams["val"], cfg.n_vocab, fp, test=streams["test"])


def _tokenize(
    cfg: DataConfig,
    parts: dict[str, list[Document]],
    corpus_sha: str,
    root: Path,
    meta: dict[str, Any],
) -> dict[str, np.ndarray]:
    """{stream: uint16 tokens} of the split's documents; records tokenizer facts in ``meta``."""
    if cfg.tokenizer == "bytes":
        return {name: encode_bytes(docs) for name, docs in parts.items()}
    split_key = ",".join(f"{k}={v}" for k, v in _split_settings(cfg).items())
    tok = cached_bpe(parts["train"], cfg.bpe_vocab_size, f"{corpus_sha}:{split_key}", root)
    meta |= {"bpe_vocab_size": cfg.bpe_vocab_size, "bpe_ids": tok.get_vocab_size()}
    return {name: encode_bpe(tok, docs) for name, docs in parts.items()}


def _load_synthetic(cfg: DataConfig, root: Path) -> TokenData:
    """Synthetic corpus: ``synthetic_tokens`` train tokens, fresh ``val_tokens`` validation and
    ``test_tokens`` test tokens (independent streams), entropy known."""
    settings: dict[str, Any] = {
        "corpus": "synthetic",
        "vocab": cfg.synthetic_vocab,
        "order": cfg.synthetic_order,
        "branching": cfg.synthetic_branching,
        "seed": cfg.synthetic_seed,
        "tokens": cfg.synthetic_tokens,
        "val_tokens": cfg.val_tokens,
        "test_tokens": cfg.eval_test_tokens,
        "zipf_exponent": ZIPF_EXPONENT,
        "dirichlet_alpha": DIRICHLET_ALPHA,
        "segment_tokens": SEGMENT_TOKENS,
    }
    if cfg.synthetic_topics > 1:
        settings |= {"topics": cfg.synthetic_topics, "doc_tokens": cfg.synthetic_doc_tokens}
    key = cache_key(**settings)
    hit = load_streams(root, key)
    if hit is not None:
        streams, meta = hit
        log.info("synthetic tokens from cache %s", key)
        return TokenData(streams["train"], streams["val"], cfg.n_vocab, meta, meta["entropy"],
                         test=streams["test"])

    lang, sample = _synthetic_language(cfg)
    log.info(
        "synthetic language: %d contexts, entropy %.4f nats/token", lang.n_contexts, lang.entropy
    )
    seed = cfg.synthetic_seed
    sizes = {"train": cfg.synthetic_tokens, "val": cfg.val_tokens, "test": cfg.eval_test_tokens}
    streams = {
        name: sample(n, np.random.Generator(np.random.PCG64([seed, stream])))
        for stream, (name, n) in enumerate(sizes.items(), start=1)
    }
    train, val = streams["train"], streams["val"]
    meta = settings | {
        "contexts": lang.n_contexts,
        "support_contexts": _support(lang),
        "entropy": lang.entropy,
        "sha256": hashlib.sha256(train.tobytes() + val.tobytes()).hexdigest(),
        "train_tokens": len(train),
        "val_tokens": len(val),
        "test_tokens": len(streams["test"]),
        "val_sha": stream_sha(val),
        "test_sha": stream_sha(streams["test"]),
        "cache_key": key,
    }
    save_streams(root, key, streams, meta)
    return TokenData(train, val, cfg.n_vocab, meta, lang.entropy, test=streams["test"])


Sampler = Callable[[int, np.random.Generator], np.ndarray]


def _synthetic_language(cfg: DataConfig) -> tuple[MarkovLanguage | TopicLanguage, Sampler]:
    """The configured language and a sampler of ``n`` tokens of it."""
    shape = (cfg.synthetic_vocab, cfg.synthetic_order, cfg.synthetic_branching, cfg.synthetic_seed)
    if cfg.synthetic_topics > 1:
        topics = make_topics(*shape, cfg.synthetic_topics, cfg.synthetic_doc_tokens)
        return topics, lambda n, rng: sample_documents(topics, n, rng)
    lang = make_language(*shape)
    return lang, lambda n, rng: sample_tokens(lang, n, rng)


def _support(lang: MarkovLanguage | TopicLanguage) -> int:
    """Contexts the sampled stream can visit (the closed classes sampled from)."""
    langs = lang.topics if isinstance(lang, TopicLanguage) else (lang,)
    return sum(int(np.count_nonzero(la.stationary)) for la in langs)


def train_batch(
    data: TokenData, seq_len: int, batch_size: int, seed: int, step: int, micro: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, T) int64: B random windows of T + 1 training tokens.

    A pure function of (data, seq_len, batch_size, seed, step, micro); all must be >= 0.
    """
    n = len(data.train)
    if n < seq_len + 1:
        raise ValueError(
            f"training stream ({n} tokens) is shorter than seq_len + 1 ({seq_len + 1})"
        )
    rng = np.random.Generator(np.random.PCG64([seed, step, micro]))
    starts = rng.integers(0, n - seq_len, size=batch_size)  # (B,)
    idx = starts[:, None] + np.arange(seq_len + 1)  # (B, T+1)
    win = torch.from_numpy(np.asarray(data.train[idx], dtype=np.int64))  # (B, T+1)
    return win[:, :-1].contiguous(), win[:, 1:].contiguous()


def eval_windows(n: int, seq_len: int, n_tokens: int) -> np.ndarray:
    """Start offsets (W,) of the evaluation windows of T + 1 tokens in a stream of ``n`` tokens:
    W = (min(n_tokens, n) - 1) // T, spread evenly from 0 to n - 1 - T (never overlapping)."""
    m = min(n_tokens, n)
    n_win = (m - 1) // seq_len
    if n_win < 1:
        raise ValueError(f"held-out stream ({m} tokens) is shorter than seq_len + 1 "
                         f"({seq_len + 1})")
    if n_win == 1:
        return np.zeros(1, dtype=np.int64)
    return np.arange(n_win, dtype=np.int64) * (n - 1 - seq_len) // (n_win - 1)


def eval_batches(
    stream: np.ndarray, seq_len: int, n_tokens: int, batch_size: int, what: str = "held-out"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed evaluation set of ``stream``: the windows of :func:`eval_windows`, as batches of
    (inputs, targets), each (<=B, T) int64."""
    n = len(stream)
    if n < n_tokens:
        log.warning("%s stream has %d tokens, fewer than the %d asked", what, n, n_tokens)
    starts = eval_windows(n, seq_len, n_tokens)  # (W,)
    idx = starts[:, None] + np.arange(seq_len + 1)  # (W, T+1)
    win = torch.from_numpy(np.asarray(stream[idx], dtype=np.int64))  # (W, T+1)
    return [
        (win[i : i + batch_size, :-1].contiguous(), win[i : i + batch_size, 1:].contiguous())
        for i in range(0, len(starts), batch_size)
    ]


def val_batches(
    data: TokenData, seq_len: int, n_tokens: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set (:func:`eval_batches` of ``data.val``; ``data.test`` the same
    way gives the test set)."""
    return eval_batches(data.val, seq_len, n_tokens, batch_size, "validation")


__all__ = [
    "Document",
    "MarkovLanguage",
    "TokenData",
    "TopicLanguage",
    "eval_batches",
    "eval_windows",
    "load_data",
    "make_language",
    "make_topics",
    "read_shard",
    "sample_documents",
    "sample_tokens",
    "split_ids",
    "stdlib_files",
    "stream_sha",
    "synthetic_entropy",
    "train_batch",
    "val_batches",
    "write_shard",
]
