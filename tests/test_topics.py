"""The topic language of the sparsity control (harness.data.synthetic.TopicLanguage): an exact
entropy, documents as described, and a capacity knob that changes what a fixed model reaches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest

from harness.config import DataConfig, TrialConfig
from harness.data import load_data, make_topics, sample_documents, synthetic_entropy
from harness.tracking import MemoryTracker
from harness.train import run_trial


@pytest.mark.parametrize(("vocab", "order", "branching", "topics", "doc"),
                         [(16, 1, 3, 4, 32), (8, 2, 3, 5, 20)])
def test_topic_entropy_is_exact(vocab: int, order: int, branching: int, topics: int,
                                doc: int) -> None:
    """The closed form equals the mean log-loss of the true model on sampled documents."""
    lang = make_topics(vocab, order, branching, 3, topics, doc)
    tokens = sample_documents(lang, doc * 20_000, np.random.Generator(np.random.PCG64(7)))
    per_doc = -lang.log_probs(tokens).reshape(-1, doc).sum(axis=1)  # (docs,)
    se = per_doc.std() / np.sqrt(len(per_doc))
    assert abs(per_doc.mean() - lang.doc_entropy) < 4 * se
    assert lang.entropy == pytest.approx(lang.doc_entropy / doc)
    assert lang.entropy == synthetic_entropy(vocab, order, branching, 3, topics, doc)


def test_documents_start_with_their_topic_marker() -> None:
    lang = make_topics(16, 1, 3, 0, 6, 24)
    docs = sample_documents(lang, 24 * 500, np.random.Generator(np.random.PCG64(1)))
    docs = docs.reshape(-1, 24)
    markers, body = docs[:, 0].astype(int), docs[:, 1:]
    assert set(markers) == set(range(16, 22))  # every topic appears, as token V + t
    assert body.max() < 16  # chain tokens only after the marker
    for doc in docs[:50]:  # each body is possible under its own topic's chain, not another's
        own = lang.topics[int(doc[0]) - 16]
        assert np.isfinite(own.log_probs(doc[1:])).all()


def test_topic_corpus_load(tmp_path: Path) -> None:
    cfg = DataConfig(corpus="synthetic", synthetic_vocab=16, synthetic_topics=4,
                     synthetic_doc_tokens=32, synthetic_tokens=32 * 100, val_tokens=32 * 10)
    data = load_data(cfg, tmp_path)
    assert data.vocab_size == cfg.n_vocab == 20
    assert (data.train.reshape(-1, 32)[:, 0] >= 16).all()
    assert data.entropy == synthetic_entropy(16, 1, 4, 0, 4, 32)
    assert data.fingerprint["topics"] == 4
    single = load_data(cfg.model_copy(update={"synthetic_topics": 1}), tmp_path)
    assert single.vocab_size == 16 and "topics" not in single.fingerprint


def test_topic_limits_name_the_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="synthetic_topics"):
        DataConfig(corpus="synthetic", synthetic_vocab=256, synthetic_order=2,
                   synthetic_topics=4)
    with pytest.raises(pydantic.ValidationError, match="synthetic_doc_tokens"):
        DataConfig(corpus="synthetic", synthetic_order=3, synthetic_vocab=8,
                   synthetic_topics=2, synthetic_doc_tokens=4)


def _gap(topics: int, tmp_path: Path) -> float:
    """Test loss above the exact entropy of a fixed small model after 150 steps."""
    trial = TrialConfig.model_validate({
        "model": {"d_model": 32, "n_layers": 2, "first_k_dense": 1, "dense_ffn_dim": 64,
                  "vocab_size": 64,
                  "attention": {"n_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                                "qk_rope_head_dim": 4, "v_head_dim": 8},
                  "moe": {"n_routed_experts": 4, "top_k": 2, "expert_ffn_dim": 16}},
        "optim": {"name": "adamw", "lr": 1e-2},
        "data": {"corpus": "synthetic", "synthetic_vocab": 32, "synthetic_topics": topics,
                 "synthetic_doc_tokens": 64, "synthetic_tokens": 300_000, "val_tokens": 8192},
        "train": {"tokens": 150 * 2048, "batch_tokens": 2048, "seq_len": 64, "log_every": 50,
                  "eval_every": 10**9, "checkpoint_every": 10**9, "threads": 1},
    })
    result = run_trial(trial, MemoryTracker(), cache_dir=tmp_path)
    entropy = load_data(trial.data, tmp_path).entropy
    assert entropy is not None
    return result.final_test_loss - entropy


def test_more_topics_leave_a_fixed_model_further_from_its_floor(tmp_path: Path) -> None:
    one, many = _gap(2, tmp_path), _gap(24, tmp_path)
    assert 0 <= one < many - 0.1, (one, many)
