"""Tokenizers: raw UTF-8 bytes (vocabulary 256) and byte-level BPE from the ``tokenizers`` library.

``bytes``: a document's bytes are its tokens; documents are concatenated with no separator (every
id of 0..255 is a byte, none is free for one).

``bpe``: GPT-2 style byte-level BPE (``tokenizers`` ``ByteLevel`` pre-tokenizer and decoder, the
256 byte symbols as initial alphabet) trained on the training documents only, to
``bpe_vocab_size`` ids including ``<|endoftext|>`` (id 0), which follows every document in the
stream. A small corpus may stop merging early, leaving fewer ids than asked; the model's vocabulary
is still ``bpe_vocab_size``. Trained tokenizers are cached as JSON keyed by the corpus fingerprint,
split and vocabulary size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from harness.data.cache import atomic_write_text, cache_key
from harness.data.documents import Document

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
"""BPE end-of-document token, id 0."""


def encode_bytes(docs: list[Document]) -> np.ndarray:
    """All documents' bytes, concatenated, as uint16 tokens (n_bytes,)."""
    return np.frombuffer(b"".join(d.data for d in docs), dtype=np.uint8).astype(np.uint16)


def _texts(docs: list[Document]) -> list[str]:
    """Documents as str; bytes that are not UTF-8 become U+FFFD."""
    return [d.data.decode("utf-8", errors="replace") for d in docs]


def train_bpe(docs: list[Document], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer with ``vocab_size`` ids (at most) trained on ``docs``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(docs), trainer, length=len(docs))
    return tok


def cached_bpe(docs: list[Document], vocab_size: int, corpus_key: str, root: Path) -> Tokenizer:
    """:func:`train_bpe` on ``docs``, loaded from ``root/bpe`` when trained before.

    ``corpus_key`` must identify ``docs`` (corpus fingerprint and split); it and ``vocab_size`` key
    the cache entry.
    """
    path = root / "bpe" / f"{cache_key(corpus=corpus_key, bpe_vocab_size=vocab_size)}.json"
    if path.exists():
        log.info("BPE tokenizer from cache %s", path)
        return Tokenizer.from_file(str(path))
    t0 = time.perf_counter()
    n_bytes = sum(len(d.data) for d in docs)
    log.info(
        "training BPE (vocab %d) on %d documents, %.1f MB", vocab_size, len(docs), n_bytes / 1e6
    )
    tok = train_bpe(docs, vocab_size)
    log.info("BPE trained in %.1fs (%d ids)", time.perf_counter() - t0, tok.get_vocab_size())
    atomic_write_text(path, tok.to_str())
    return tok


def encode_bpe(tok: Tokenizer, docs: list[Document]) -> np.ndarray:
    """Each document's ids followed by ``<|endoftext|>``, concatenated: uint16 (n_tokens,)."""
    if tok.get_vocab_size() > 65536:
        raise ValueError(f"BPE vocabulary ({tok.get_vocab_size()}) does not fit uint16 tokens")
    if not docs:
        return np.zeros(0, dtype=np.uint16)
    t0 = time.perf_counter()
    eot = tok.token_to_id(EOT)
    parts = [np.asarray([*e.ids, eot], dtype=np.uint16) for e in tok.encode_batch(_texts(docs))]
    out = np.concatenate(parts)
    log.info(
        "BPE-encoded %d documents into %d tokens in %.1fs",
        len(docs),
        len(out),
        time.perf_counter() - t0,
    )
    return out
