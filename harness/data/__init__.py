"""Training data: corpora, tokenizers, cached token streams and deterministic batches.

Corpora (``DataConfig.corpus``):

- ``stdlib`` (default): the running interpreter's standard library ``*.py`` files, tests and
  ``site-packages`` excluded (:mod:`harness.data.documents`), ~12 MB of real code, no download;
- ``text``: files matching ``DataConfig.glob`` under ``DataConfig.path``;
- ``tokens``: nanoGPT / modded-nanogpt ``.bin`` shards, memory-mapped (:mod:`harness.data.shards`);
- ``synthetic``: a sparse random Markov chain with an exactly known entropy rate
  (:mod:`harness.data.synthetic`), for checking fitted irreducible losses.

Document corpora are split by document hash (:func:`documents.split_documents`), tokenized
with ``bytes`` or ``bpe`` (:mod:`harness.data.tokenize`) and cached as uint16 ``.npy`` streams
keyed by the corpus fingerprint and tokenizer settings (:mod:`harness.data.cache`), so a second
trial only memory-maps them.

Batches are pure functions of their arguments: training windows of T + 1 tokens start at offsets
drawn by ``np.random.Generator(PCG64([seed, step, micro]))``, so the same seed gives the same
batches on any machine, and resuming needs nothing but the step counter. Validation is fixed: the
first ``n_tokens`` tokens of the validation stream cut into windows of T + 1 tokens that overlap by
one (stride T), so each of those tokens after the first is a target exactly once.

Shapes: B batch (sequences), T sequence length (tokens), W validation windows.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import DataConfig
from harness.data.cache import cache_key, cache_root, load_streams, save_streams
from harness.data.documents import (
    Document,
    fingerprint,
    split_documents,
    stdlib_documents,
    stdlib_files,
    text_documents,
)
from harness.data.shards import load_shards, read_shard, write_shard
from harness.data.synthetic import (
    DIRICHLET_ALPHA,
    SEGMENT_TOKENS,
    ZIPF_EXPONENT,
    MarkovLanguage,
    make_language,
    sample_tokens,
    synthetic_entropy,
)
from harness.data.tokenize import cached_bpe, encode_bpe, encode_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TokenData:
    """Token streams of one corpus, ready for batching."""

    train: np.ndarray  # (N_train,) integer tokens (uint16; often a read-only memmap)
    val: np.ndarray  # (N_val,) integer tokens
    vocab_size: int  # ids are in [0, vocab_size): the model's vocabulary (DataConfig.n_vocab)
    fingerprint: dict[str, Any]  # JSON-able: corpus, files, bytes, sha256, tokenizer, ...
    entropy: float | None = None  # nats per token; synthetic corpus only


def load_data(cfg: DataConfig, cache_dir: str | Path | None = None) -> TokenData:
    """Load (tokenizing and caching on first use) the corpus ``cfg`` describes.

    ``cache_dir`` defaults to env ``HARNESS_CACHE``, else ``~/.cache/k2-harness``.
    """
    t0 = time.perf_counter()
    root = cache_root(cache_dir)
    if cfg.corpus == "tokens":
        assert cfg.path is not None  # DataConfig guarantees it
        train, val, fp = load_shards(cfg.path, cfg.val_tokens, root)
        fp |= {"train_tokens": len(train), "val_tokens": len(val)}
        data = TokenData(train, val, cfg.n_vocab, fp)
    elif cfg.corpus == "synthetic":
        data = _load_synthetic(cfg, root)
    else:
        data = _load_documents(cfg, root)
    log.info(
        "data %s: %d train / %d val tokens, vocab %d, in %.2fs",
        cfg.corpus,
        len(data.train),
        len(data.val),
        data.vocab_size,
        time.perf_counter() - t0,
    )
    return data


def _load_documents(cfg: DataConfig, root: Path) -> TokenData:
    """stdlib / text corpora: read, fingerprint, split by document, tokenize (or hit the cache)."""
    if cfg.corpus == "stdlib":
        base, docs = stdlib_documents()
    else:
        assert cfg.path is not None  # DataConfig guarantees it
        base, docs = text_documents(cfg.path, cfg.glob)
    corpus_fp = fingerprint(cfg.corpus, base, docs)
    settings: dict[str, Any] = {
        "corpus_sha256": corpus_fp["sha256"],
        "tokenizer": cfg.tokenizer,
        "val_fraction": cfg.val_fraction,
    }
    if cfg.tokenizer == "bpe":
        settings["bpe_vocab_size"] = cfg.bpe_vocab_size
    key = cache_key(**settings)
    hit = load_streams(root, key)
    if hit is not None:
        train, val, meta = hit
        log.info("tokens from cache %s", key)
        return TokenData(train, val, cfg.n_vocab, corpus_fp | meta)

    is_val = split_documents([d.name for d in docs], cfg.val_fraction)  # (N_docs,)
    train_docs = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val_docs = [d for d, v in zip(docs, is_val, strict=True) if v]
    meta: dict[str, Any] = {
        "tokenizer": cfg.tokenizer,
        "val_fraction": cfg.val_fraction,
        "train_files": len(train_docs),
        "val_files": len(val_docs),
        "cache_key": key,
    }
    train, val = _tokenize(cfg, train_docs, val_docs, corpus_fp["sha256"], root, meta)
    meta |= {"train_tokens": len(train), "val_tokens": len(val)}
    save_streams(root, key, train, val, meta)
    return TokenData(train, val, cfg.n_vocab, corpus_fp | meta)


def _tokenize(
    cfg: DataConfig,
    train_docs: list[Document],
    val_docs: list[Document],
    corpus_sha: str,
    root: Path,
    meta: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) uint16 streams; records tokenizer facts in ``meta``."""
    if cfg.tokenizer == "bytes":
        return encode_bytes(train_docs), encode_bytes(val_docs)
    corpus_key = f"{corpus_sha}:val_fraction={cfg.val_fraction}"
    tok = cached_bpe(train_docs, cfg.bpe_vocab_size, corpus_key, root)
    meta |= {"bpe_vocab_size": cfg.bpe_vocab_size, "bpe_ids": tok.get_vocab_size()}
    return encode_bpe(tok, train_docs), encode_bpe(tok, val_docs)


def _load_synthetic(cfg: DataConfig, root: Path) -> TokenData:
    """Synthetic corpus: ``synthetic_tokens`` train and ``val_tokens`` val tokens, entropy known."""
    settings: dict[str, Any] = {
        "corpus": "synthetic",
        "vocab": cfg.synthetic_vocab,
        "order": cfg.synthetic_order,
        "branching": cfg.synthetic_branching,
        "seed": cfg.synthetic_seed,
        "tokens": cfg.synthetic_tokens,
        "val_tokens": cfg.val_tokens,
        "zipf_exponent": ZIPF_EXPONENT,
        "dirichlet_alpha": DIRICHLET_ALPHA,
        "segment_tokens": SEGMENT_TOKENS,
    }
    key = cache_key(**settings)
    hit = load_streams(root, key)
    if hit is not None:
        train, val, meta = hit
        log.info("synthetic tokens from cache %s", key)
        return TokenData(train, val, cfg.n_vocab, meta, meta["entropy"])

    lang = make_language(
        cfg.synthetic_vocab, cfg.synthetic_order, cfg.synthetic_branching, cfg.synthetic_seed
    )
    log.info(
        "synthetic language: %d contexts, entropy %.4f nats/token", lang.n_contexts, lang.entropy
    )
    seed = cfg.synthetic_seed
    train = sample_tokens(
        lang, cfg.synthetic_tokens, np.random.Generator(np.random.PCG64([seed, 1]))
    )
    val = sample_tokens(lang, cfg.val_tokens, np.random.Generator(np.random.PCG64([seed, 2])))
    meta = settings | {
        "contexts": lang.n_contexts,
        "support_contexts": int(np.count_nonzero(lang.stationary)),
        "entropy": lang.entropy,
        "sha256": hashlib.sha256(train.tobytes() + val.tobytes()).hexdigest(),
        "train_tokens": len(train),
        "val_tokens": len(val),
        "cache_key": key,
    }
    save_streams(root, key, train, val, meta)
    return TokenData(train, val, cfg.n_vocab, meta, lang.entropy)


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


def val_batches(
    data: TokenData, seq_len: int, n_tokens: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set: the first ``n_tokens`` tokens in windows of T + 1 (stride T).

    Returns batches of (inputs, targets), each (<=B, T) int64; W = (n - 1) // T windows in all,
    n = min(n_tokens, len(data.val)).
    """
    n = min(n_tokens, len(data.val))
    if n < n_tokens:
        log.warning("validation stream has %d tokens, fewer than the %d asked", n, n_tokens)
    n_win = (n - 1) // seq_len
    if n_win < 1:
        raise ValueError(
            f"validation stream ({n} tokens) is shorter than seq_len + 1 ({seq_len + 1})"
        )
    idx = np.arange(n_win)[:, None] * seq_len + np.arange(seq_len + 1)  # (W, T+1)
    win = torch.from_numpy(np.asarray(data.val[idx], dtype=np.int64))  # (W, T+1)
    return [
        (win[i : i + batch_size, :-1].contiguous(), win[i : i + batch_size, 1:].contiguous())
        for i in range(0, n_win, batch_size)
    ]


__all__ = [
    "Document",
    "MarkovLanguage",
    "TokenData",
    "load_data",
    "make_language",
    "read_shard",
    "sample_tokens",
    "stdlib_files",
    "synthetic_entropy",
    "train_batch",
    "val_batches",
    "write_shard",
]
