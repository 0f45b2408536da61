"""Parameter and FLOP accounting (harness/config/accounting.py) against built models."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from harness.config import ModelConfig
from harness.model.transformer import Transformer

MLA = {
    "n_heads": 4,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4,
    "v_head_dim": 6,
}
MOE = {"n_routed_experts": 8, "top_k": 2, "n_shared": 1, "expert_ffn_dim": 12}


def cfg(attention: dict | None = None, moe: dict | None = None, **kw: object) -> ModelConfig:
    base: dict[str, object] = {
        "d_model": 32,
        "n_layers": 3,
        "first_k_dense": 1,
        "dense_ffn_dim": 40,
        "vocab_size": 50,
    }
    base.update(kw)
    base["attention"] = {**MLA, **(attention or {})}
    base["moe"] = {**MOE, **(moe or {})}
    return ModelConfig.model_validate(base)


CONFIGS = [
    pytest.param(cfg(), id="mla"),
    pytest.param(cfg({"q_lora_rank": 12}), id="mla-qlora"),
    pytest.param(cfg({"kind": "mha", "n_heads": 4}), id="mha"),
    pytest.param(cfg({"kind": "mha", "n_heads": 2, "head_dim": 10}), id="mha-hd10"),
    pytest.param(cfg(moe={"n_groups": 4, "topk_groups": 2, "top_k": 3}), id="grouped"),
    pytest.param(cfg(first_k_dense=0), id="k0"),
    pytest.param(cfg(first_k_dense=3), id="all-dense"),
    pytest.param(cfg(moe={"n_shared": 0}), id="shared0"),
    pytest.param(cfg(moe={"n_shared": 2}), id="shared2"),
    pytest.param(cfg(tie_embeddings=True), id="tied"),
    pytest.param(cfg({"q_lora_rank": 8}, moe={"top_k": 8}, tie_embeddings=True), id="dense-moe"),
    pytest.param(
        cfg(moe={"score_func": "softmax", "n_routed_experts": 16}, n_layers=5), id="softmax"
    ),
]


def counted_from_modules(model: Transformer) -> tuple[int, int, int]:
    """(total, active, embedding) from the built modules; tied weights count once."""
    K, E = model.cfg.moe.top_k, model.cfg.moe.n_routed_experts
    total = sum(p.numel() for p in model.parameters())
    active = 0
    for name, p in model.named_parameters():
        active += p.numel() * K // E if ".ffn.experts." in name else p.numel()
    embedding = model.embed.weight.numel()
    if model.lm_head.weight is not model.embed.weight:
        embedding += model.lm_head.weight.numel()
    return total, active, embedding


@pytest.mark.parametrize("c", CONFIGS)
def test_param_counts_match_built_model(c: ModelConfig) -> None:
    counts = c.param_counts()
    total, active, embedding = counted_from_modules(Transformer(c))
    assert (counts.total, counts.active, counts.embedding) == (total, active, embedding)


def test_buffers_are_not_parameters() -> None:
    model = Transformer(cfg())
    names = {n for n, _ in model.named_parameters()}
    assert not any("e_score_bias" in n for n in names)
    assert any("e_score_bias" in n for n in model.state_dict())


COMMON = {
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "moe_layer_freq": 1,
    "num_key_value_heads": None,
    "initializer_range": 0.02,
}
# deepseek-ai/DeepSeek-V3 config.json (config_671B.json)
DEEPSEEK_V3 = {
    **COMMON,
    "model_type": "deepseek_v3",
    "vocab_size": 129280,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_routed_experts": 256,
    "first_k_dense_replace": 3,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "rope_theta": 10000,
    "max_position_embeddings": 163840,
    "num_nextn_predict_layers": 1,
    "aux_loss_alpha": 0.001,
    "rope_scaling": {
        "type": "yarn",
        "factor": 40,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
}
# moonshotai/Kimi-K2-Instruct config.json (K2 report Table 2)
KIMI_K2 = {
    **COMMON,
    "model_type": "kimi_k2",
    "vocab_size": 163840,
    "num_attention_heads": 64,
    "num_key_value_heads": 64,
    "n_routed_experts": 384,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 2.827,
    "rope_theta": 50000.0,
    "max_position_embeddings": 131072,
    "num_nextn_predict_layers": 0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 1.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
}


def test_deepseek_v3_counts() -> None:
    """671B total / 37B active (report); exactly 671.03B / 37.55B counting embedding and head.

    The report's 37B is rounded down: the architecture has 37.55B active with the embedding
    and LM head, 35.70B without (FACTS.md), so the report figure is checked to 2%."""
    c = ModelConfig.from_hf_config(DEEPSEEK_V3)
    assert (c.attention.n_heads, c.first_k_dense, c.moe.n_groups, c.moe.topk_groups) == (
        128,
        3,
        8,
        4,
    )
    p = c.param_counts()
    assert p.total == pytest.approx(671.03e9, rel=1e-4)
    assert p.active == pytest.approx(37.55e9, rel=1e-4)
    assert p.active_non_embedding == pytest.approx(35.70e9, rel=1e-3)
    assert p.total == pytest.approx(671e9, rel=0.01)
    assert p.active == pytest.approx(37e9, rel=0.02)


def test_kimi_k2_counts() -> None:
    c = ModelConfig.from_hf_config(KIMI_K2)
    assert (c.attention.n_heads, c.first_k_dense, c.moe.n_routed_experts, c.moe.n_groups) == (
        64,
        1,
        384,
        1,
    )
    assert c.moe.sparsity == 48
    p = c.param_counts()
    assert p.total == pytest.approx(1.04e12, rel=0.02)
    assert p.active == pytest.approx(32.6e9, rel=0.02)


def attention_extra_flops(c: ModelConfig, batch: int, seq_len: int) -> float:
    """Matmul FLOPs the model runs beyond the accounting (attention.causal_attention):
    the max-logit pass, one more Q K^T per layer, forward only (telemetry); and, when Dq != Dv
    (MLA), the zero padding to one head dim for the fused kernel, forward and backward."""
    a = c.attention
    if a.kind == "mha":
        d_qk = d_v = c.mha_head_dim
    else:
        d_qk, d_v = a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim
    pairs = c.n_layers * batch * a.n_heads * seq_len * seq_len  # (query, key) pairs
    return pairs * 2 * d_qk + 3 * pairs * 2 * abs(d_qk - d_v)


def counted_flops(c: ModelConfig, batch: int, seq_len: int) -> int:
    """FlopCounterMode's matmul FLOPs of one forward + backward. SDPA's fused CPU kernel is not
    on its list, so attention runs on the MATH backend here, whose Q K^T and P V matmuls cover
    the full T x T square, as the accounting docstring counts them."""
    torch.manual_seed(0)
    model = Transformer(c)
    tokens = torch.randint(0, c.vocab_size, (batch, seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits, _ = model(tokens)
        logits.float().logsumexp(-1).mean().backward()
    return counter.get_total_flops()


SQUARE_HEADS = {"v_head_dim": 12}  # Dq = nope 8 + rope 4 = Dv: no padding in causal_attention


@pytest.mark.parametrize(
    "c",
    [
        pytest.param(cfg({"q_lora_rank": 12, **SQUARE_HEADS}), id="mla-qlora"),
        pytest.param(cfg(SQUARE_HEADS, first_k_dense=0), id="mla-k0"),
        pytest.param(cfg({"kind": "mha", "n_heads": 4}), id="mha"),
        pytest.param(cfg(SQUARE_HEADS, moe={"n_groups": 4, "topk_groups": 2}), id="grouped"),
        pytest.param(cfg(SQUARE_HEADS, tie_embeddings=True), id="tied"),
    ],
)
def test_flops_per_token_match_flop_counter(c: ModelConfig) -> None:
    """Within 5%; the difference is the max-logit telemetry pass, which is counted exactly
    (at T = 16 it is ~2% of the total)."""
    B, T = 4, 16
    measured = counted_flops(c, B, T)
    expected = c.flops_per_token(T) * B * T
    assert measured == pytest.approx(expected, rel=0.05)
    assert measured == pytest.approx(expected + attention_extra_flops(c, B, T), rel=1e-9)


@pytest.mark.parametrize("c", [CONFIGS[0], CONFIGS[1]])
def test_flop_counter_extra_is_padding_and_telemetry(c: ModelConfig) -> None:
    """MLA with Dq != Dv: the counted surplus is exactly the head-dim padding + telemetry."""
    B, T = 2, 16
    expected = c.flops_per_token(T) * B * T + attention_extra_flops(c, B, T)
    assert counted_flops(c, B, T) == pytest.approx(expected, rel=1e-9)
