"""Every validation rule of harness/config/trial.py rejects a bad config and names the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from harness.config import (
    AttentionConfig,
    DataConfig,
    ModelConfig,
    MoEConfig,
    OptimConfig,
    TrainConfig,
    TrialConfig,
)

BAD: list[Any] = [
    # (config class, kwargs, text the message must contain)
    (AttentionConfig, {"qk_rope_head_dim": 7}, "qk_rope_head_dim"),
    (AttentionConfig, {"kind": "mha", "head_dim": 9}, "head_dim"),
    (AttentionConfig, {"kind": "mha", "q_lora_rank": 16}, "q_lora_rank"),
    (AttentionConfig, {"n_heads": 0}, "n_heads"),
    (AttentionConfig, {"kv_lora_rank": 0}, "kv_lora_rank"),
    (AttentionConfig, {"q_lora_rank": -1}, "q_lora_rank"),
    (AttentionConfig, {"kind": "gqa"}, "kind"),
    (AttentionConfig, {"rope_theta": 0}, "rope_theta"),
    (MoEConfig, {"n_routed_experts": 2, "top_k": 3}, "top_k"),
    (MoEConfig, {"n_routed_experts": 8, "n_groups": 3}, "n_groups"),
    (MoEConfig, {"n_routed_experts": 8, "n_groups": 2, "topk_groups": 3}, "topk_groups"),
    (MoEConfig, {"n_routed_experts": 8, "top_k": 1, "n_groups": 8}, "n_groups"),
    (
        MoEConfig,
        {"n_routed_experts": 8, "top_k": 4, "n_groups": 4, "topk_groups": 1},
        "topk_groups",
    ),
    (MoEConfig, {"n_shared": -1}, "n_shared"),
    (MoEConfig, {"score_func": "relu"}, "score_func"),
    (MoEConfig, {"bias_update_rate": -1e-3}, "bias_update_rate"),
    (MoEConfig, {"seq_aux_alpha": -1.0}, "seq_aux_alpha"),
    (MoEConfig, {"routed_scaling_factor": 0}, "routed_scaling_factor"),
    (ModelConfig, {"n_layers": 2, "first_k_dense": 3}, "first_k_dense"),
    (ModelConfig, {"d_model": 36, "attention": {"kind": "mha", "n_heads": 4}}, "n_heads"),
    (
        ModelConfig,
        {"d_model": 34, "attention": {"kind": "mha", "n_heads": 4}},
        "must divide d_model",
    ),
    (ModelConfig, {"d_model": 0}, "d_model"),
    (ModelConfig, {"norm_eps": 0}, "norm_eps"),
    (OptimConfig, {"betas": (0.9, 1.0)}, "betas"),
    (OptimConfig, {"momentum": 1.0}, "momentum"),
    (OptimConfig, {"qk_clip_tau": 0}, "qk_clip_tau"),
    (OptimConfig, {"name": "sgd"}, "name"),
    (DataConfig, {"corpus": "text"}, "path"),
    (DataConfig, {"corpus": "tokens"}, "path"),
    (DataConfig, {"corpus": "synthetic", "tokenizer": "bpe"}, "tokenizer"),
    (
        DataConfig,
        {"corpus": "synthetic", "synthetic_vocab": 4, "synthetic_branching": 5},
        "synthetic_branching",
    ),
    (DataConfig, {"val_fraction": 0.5}, "val_fraction"),
    (DataConfig, {"bpe_vocab_size": 100}, "bpe_vocab_size"),
    (TrainConfig, {"batch_tokens": 1000, "seq_len": 256}, "batch_tokens"),
    (
        TrainConfig,
        {"batch_tokens": 1024, "seq_len": 256, "micro_batch_tokens": 768},
        "micro_batch_tokens",
    ),
    (
        TrainConfig,
        {"batch_tokens": 1024, "seq_len": 256, "micro_batch_tokens": 128},
        "micro_batch_tokens",
    ),
    (TrainConfig, {"tokens": 512, "batch_tokens": 1024, "seq_len": 256}, "tokens"),
    (TrainConfig, {"warmup_frac": 1.0}, "warmup_frac"),
    (TrainConfig, {"schedule": "linear"}, "schedule"),
    (TrialConfig, {"model": {"max_seq_len": 128}, "train": {"seq_len": 256}}, "seq_len"),
    (TrialConfig, {"model": {"vocab_size": 100}}, "vocab_size"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"), BAD, ids=[f"{c.__name__}-{f}" for c, _, f in BAD]
)
def test_bad_config_names_the_field(cls: type, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        cls.model_validate(kwargs)
    assert field in str(err.value)


@pytest.mark.parametrize(
    "cls",
    [AttentionConfig, MoEConfig, ModelConfig, OptimConfig, DataConfig, TrainConfig, TrialConfig],
)
def test_unknown_key_is_rejected(cls: type) -> None:
    with pytest.raises(ValidationError, match="not_a_field"):
        cls.model_validate({"not_a_field": 1})


def test_defaults_are_valid_and_frozen() -> None:
    trial = TrialConfig()
    with pytest.raises(ValidationError):
        trial.model.d_model = 64  # type: ignore[misc]
    assert trial.hash == TrialConfig().hash


def test_grouped_routing_config_accepted() -> None:
    m = MoEConfig(n_routed_experts=16, top_k=4, n_groups=4, topk_groups=2)
    assert m.sparsity == 4


def test_an_arm_label_as_optimizer_name_says_what_to_write() -> None:
    with pytest.raises(ValidationError, match=r"'muonclip' is not an optimizer: MuonClip is "
                                              r"name: muon with qk_clip_tau: 100"):
        OptimConfig.model_validate({"name": "muonclip"})
    with pytest.raises(ValidationError, match=r"name: adamw with qk_clip_tau"):
        OptimConfig.model_validate({"name": "adamw+clip"})
    assert OptimConfig(name="muon", qk_clip_tau=100).arm == "muonclip"
