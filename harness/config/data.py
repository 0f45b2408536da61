"""Where a trial's tokens come from: the corpus, its tokenizer, and the validation and test
splits (:class:`DataConfig`). Units are in the field docs; the data pipeline is
:mod:`harness.data`."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from harness.config.frozen import Frozen

SYNTHETIC_MAX_CONTEXTS = 2**17
"""Most contexts (synthetic_vocab ** synthetic_order) whose stationary law is solved exactly."""
SYNTHETIC_MAX_TRANSITIONS = 2**24
"""Most nonzero transitions (contexts x synthetic_branching) of the synthetic chain."""


class DataConfig(Frozen):
    """Where tokens come from and how text becomes tokens."""

    corpus: Literal["stdlib", "text", "tokens", "synthetic"] = "stdlib"
    path: str | None = Field(None, description="folder for corpus text or tokens")
    glob: str = Field("**/*.txt", description="corpus text: files to read under path")
    tokenizer: Literal["bytes", "bpe"] = "bytes"
    bpe_vocab_size: int = Field(1024, ge=260, description="tokenizer bpe: vocabulary size")
    vocab_size: int | None = Field(
        None, gt=0, description="corpus tokens: vocabulary of the shards (null = 65536)"
    )
    val_fraction: float = Field(
        0.05, gt=0, lt=0.5,
        description="stdlib/text: fraction of documents (by group hash) in the validation split",
    )
    test_fraction: float = Field(
        0.05, gt=0, lt=0.5,
        description="stdlib/text: fraction of documents (by group hash) in the test split",
    )
    near_dup_jaccard: float = Field(
        0.3, gt=0, le=1,
        description="stdlib/text: documents whose word 5-gram sets have this Jaccard similarity "
        "or more are one group, kept on one side of the split",
    )
    val_tokens: int = Field(
        262_144, gt=0,
        description="tokens in the validation set (selection: lr, early looks), in windows "
        "spread evenly over the validation split; tokens/synthetic: tokens held out for it",
    )
    test_tokens: int | None = Field(
        None, gt=0,
        description="tokens in the test set (every reported number), like val_tokens "
        "(null = val_tokens)",
    )
    synthetic_vocab: int = Field(64, ge=2, le=65536, description="synthetic: vocabulary size")
    synthetic_order: int = Field(1, ge=1, le=4, description="synthetic: Markov order")
    synthetic_branching: int = Field(4, ge=1, description="synthetic: successors per context")
    synthetic_tokens: int = Field(2_000_000, gt=0, description="synthetic: tokens generated")
    synthetic_seed: int = Field(0, ge=0, description="synthetic: seed of the language itself")
    synthetic_topics: int = Field(
        1, ge=1, le=4096,
        description="synthetic: independent languages (topics), one per document; > 1 adds a "
        "marker token per topic at each document's start",
    )
    synthetic_doc_tokens: int = Field(
        256, ge=3, description="synthetic, topics > 1: tokens per document, marker included"
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.corpus in ("text", "tokens") and not self.path:
            raise ValueError(f"path is required for corpus {self.corpus}")
        if self.corpus in ("tokens", "synthetic") and self.tokenizer != "bytes":
            raise ValueError(f"tokenizer must be bytes (unused) for corpus {self.corpus}")
        if self.synthetic_branching > self.synthetic_vocab:
            raise ValueError(
                f"synthetic_branching ({self.synthetic_branching}) must be <= synthetic_vocab "
                f"({self.synthetic_vocab})"
            )
        contexts = self.synthetic_vocab**self.synthetic_order * self.synthetic_topics
        if self.corpus == "synthetic" and contexts > SYNTHETIC_MAX_CONTEXTS:
            raise ValueError(
                f"synthetic_vocab ** synthetic_order x synthetic_topics ({self.synthetic_vocab} "
                f"** {self.synthetic_order} x {self.synthetic_topics} = {contexts}) must be <= "
                f"{SYNTHETIC_MAX_CONTEXTS} contexts"
            )
        if self.synthetic_topics > 1 and self.synthetic_doc_tokens < self.synthetic_order + 2:
            raise ValueError(
                f"synthetic_doc_tokens ({self.synthetic_doc_tokens}) must be >= synthetic_order "
                f"+ 2 ({self.synthetic_order + 2}): a marker, a context and one transition"
            )
        if self.n_vocab > 65536:
            raise ValueError(
                f"synthetic_vocab + synthetic_topics ({self.n_vocab}) must be <= 65536 "
                "(tokens are stored as uint16)"
            )
        if self.corpus == "synthetic" and contexts * self.synthetic_branching > (
            SYNTHETIC_MAX_TRANSITIONS
        ):
            raise ValueError(
                f"synthetic_branching ({self.synthetic_branching}) x {contexts} contexts must be "
                f"<= {SYNTHETIC_MAX_TRANSITIONS} transitions"
            )
        return self

    @property
    def eval_test_tokens(self) -> int:
        """Tokens in the test set: ``test_tokens``, else ``val_tokens``."""
        return self.test_tokens or self.val_tokens

    @property
    def n_vocab(self) -> int:
        """Size of the token vocabulary this data produces."""
        if self.corpus == "synthetic":
            markers = self.synthetic_topics if self.synthetic_topics > 1 else 0
            return self.synthetic_vocab + markers
        if self.corpus == "tokens":
            return self.vocab_size or 65536
        return self.bpe_vocab_size if self.tokenizer == "bpe" else 256
