"""Transformer, MLA and MHA: shapes, init, causality, telemetry against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config import ModelConfig
from harness.model.attention import MHA, MLA, build_attention
from harness.model.layers import RMSNorm
from harness.model.transformer import Telemetry, Transformer


def small(**overrides: object) -> ModelConfig:
    base: dict[str, object] = {
        "d_model": 32,
        "n_layers": 3,
        "first_k_dense": 1,
        "dense_ffn_dim": 48,
        "vocab_size": 64,
        "max_seq_len": 32,
        "attention": {
            "n_heads": 4,
            "kv_lora_rank": 16,
            "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 4,
            "v_head_dim": 6,
        },
        "moe": {"n_routed_experts": 8, "top_k": 2, "n_shared": 1, "expert_ffn_dim": 12},
    }
    base.update(overrides)
    return ModelConfig.model_validate(base)


ATTENTION_CONFIGS = [
    pytest.param(small(), id="mla"),
    pytest.param(
        small(
            attention={
                "n_heads": 4,
                "q_lora_rank": 12,
                "kv_lora_rank": 16,
                "qk_nope_head_dim": 8,
                "qk_rope_head_dim": 4,
                "v_head_dim": 6,
            }
        ),
        id="mla-qlora",
    ),
    pytest.param(small(attention={"kind": "mha", "n_heads": 4}), id="mha"),
    pytest.param(small(attention={"kind": "mha", "n_heads": 2, "head_dim": 10}), id="mha-hd10"),
]


def rms(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    return norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)


def rope_complex(u: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex rotation: dim i and i + R/2 form z_i, turned by t * theta^(-2i/R).

    u (B, T, ..., R) -> complex (B, T, ..., R/2)."""
    R, T = u.shape[-1], u.shape[1]
    z = torch.complex(u[..., : R // 2], u[..., R // 2 :])
    freq = theta ** (-torch.arange(0, R, 2, dtype=torch.float64) / R)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freq  # (T, R/2)
    shape = [1, T] + [1] * (u.dim() - 3) + [R // 2]
    return z * torch.polar(torch.ones_like(angle), angle).view(shape)


def explicit_qkv(attn: MLA | MHA, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-head logits (B, H, T, T) and values (B, T, H, Dv) from the weights, written out."""
    B, T, _ = x.shape
    H = attn.n_heads
    if isinstance(attn, MHA):
        hd = attn.head_dim
        q = (x @ attn.q_proj.weight.T).view(B, T, H, hd)
        k = (x @ attn.k_proj.weight.T).view(B, T, H, hd)
        v = (x @ attn.v_proj.weight.T).view(B, T, H, hd)
        zq, zk = rope_complex(q, attn.rope_theta), rope_complex(k, attn.rope_theta)
        logits = torch.einsum("bihr,bjhr->bhij", zq, zk.conj()).real
        return logits * attn.softmax_scale, v
    Dn, R, Dv = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    if attn.q_lora_rank:
        q = rms(x @ attn.q_a_proj.weight.T, attn.q_a_norm) @ attn.q_b_proj.weight.T
    else:
        q = x @ attn.q_proj.weight.T
    q = q.view(B, T, H, Dn + R)
    kv_a = x @ attn.kv_a_proj.weight.T
    c_kv, k_r = kv_a[..., : attn.kv_lora_rank], kv_a[..., attn.kv_lora_rank :]
    kv = (rms(c_kv, attn.kv_a_norm) @ attn.kv_b_proj.weight.T).view(B, T, H, Dn + Dv)
    nope = torch.einsum("bihd,bjhd->bhij", q[..., :Dn], kv[..., :Dn])
    zq, zk = rope_complex(q[..., Dn:], attn.rope_theta), rope_complex(k_r, attn.rope_theta)
    rope = torch.einsum("bihr,bjr->bhij", zq, zk.conj()).real  # one k^R for all heads
    return (nope + rope) * attn.softmax_scale, kv[..., Dn:]


def causal(logits: torch.Tensor) -> torch.Tensor:
    T = logits.shape[-1]
    return logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))


def randomised(attn: MLA | MHA, seed: int) -> MLA | MHA:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / p.shape[-1] ** 0.5)
            if p.dim() == 1:
                p.add_(1.0)
    return attn


@pytest.mark.parametrize("cfg", ATTENTION_CONFIGS)
def test_max_logits_and_output_match_brute_force(cfg: ModelConfig) -> None:
    attn = randomised(build_attention(cfg), seed=0).double()
    x = 2.0 * torch.randn(3, 9, cfg.d_model, dtype=torch.float64)
    out, max_logit = attn(x)
    logits, v = explicit_qkv(attn, x)
    expected_max = causal(logits).amax(dim=(0, 2, 3))  # (H,)
    assert max_logit.dtype == torch.float32 and not max_logit.requires_grad
    torch.testing.assert_close(max_logit, expected_max.float())
    probs = causal(logits).softmax(-1)  # (B, H, T, T)
    heads = torch.einsum("bhij,bjhd->bihd", probs, v).flatten(2)  # (B, T, H*Dv)
    torch.testing.assert_close(out, heads @ attn.o_proj.weight.T)


def test_model_max_logits_are_per_layer_brute_force() -> None:
    cfg = small(
        attention={
            "n_heads": 4,
            "q_lora_rank": 12,
            "kv_lora_rank": 16,
            "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 4,
            "v_head_dim": 6,
        },
        init_std=0.3,
    )
    torch.manual_seed(0)
    model = Transformer(cfg).double()
    inputs: list[torch.Tensor] = []
    for attn in model.attention_modules():
        attn.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    _, telemetry = model(torch.randint(0, cfg.vocab_size, (2, 11)))
    for layer, (attn, x) in enumerate(zip(model.attention_modules(), inputs, strict=True)):
        expected = causal(explicit_qkv(attn, x)[0]).amax(dim=(0, 2, 3)).float()
        torch.testing.assert_close(telemetry.max_logits[layer], expected)


def test_forward_shapes_and_telemetry() -> None:
    cfg = small(
        moe={"n_routed_experts": 8, "top_k": 2, "expert_ffn_dim": 12, "seq_aux_alpha": 1e-3}
    )
    torch.manual_seed(0)
    model = Transformer(cfg)
    logits, t = model(torch.randint(0, 64, (2, 10)))
    assert isinstance(t, Telemetry)
    assert logits.shape == (2, 10, 64)
    assert t.max_logits.shape == (3, 4) and t.max_logits.dtype == torch.float32
    assert t.expert_load.shape == (2, 8) and t.expert_load.dtype == torch.float32
    assert torch.all(t.expert_load.sum(-1) == 2 * 10 * 2)
    assert t.aux_loss.shape == () and t.aux_loss.requires_grad and t.aux_loss > 0
    with pytest.raises(Exception, match=r"frozen|cannot assign"):
        t.aux_loss = torch.zeros(())  # type: ignore[misc]
    (logits.logsumexp(-1).mean() + t.aux_loss).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dense_only_and_no_aux() -> None:
    cfg = small(first_k_dense=3)
    _, t = Transformer(cfg)(torch.randint(0, 64, (1, 5)))
    assert t.expert_load.shape == (0, 8)
    assert t.aux_loss.shape == () and t.aux_loss.item() == 0.0


def test_module_layout() -> None:
    cfg = small(n_layers=4, first_k_dense=2)
    model = Transformer(cfg)
    kinds = [type(b.ffn).__name__ for b in model.blocks]
    assert kinds == ["SwiGLU", "SwiGLU", "MoE", "MoE"]
    assert [a.kind for a in model.attention_modules()] == ["mla"] * 4
    assert model.lm_head.bias is None and model.lm_head.weight is not model.embed.weight
    tied = Transformer(small(tie_embeddings=True))
    assert tied.lm_head.weight is tied.embed.weight


def test_init_is_deterministic_and_as_specified() -> None:
    cfg = small(d_model=64, vocab_size=512, init_std=0.05)
    torch.manual_seed(3)
    a = Transformer(cfg)
    torch.manual_seed(3)
    b = Transformer(cfg)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert abs(a.embed.weight.std().item() - 0.05) < 0.002
    assert abs(a.blocks[1].ffn.experts.w2.std().item() - 0.05) < 0.002
    assert torch.all(a.norm.weight == 1) and torch.all(a.blocks[0].attn.kv_a_norm.weight == 1)
    assert torch.all(a.blocks[1].ffn.e_score_bias == 0)


@pytest.mark.parametrize("cfg", ATTENTION_CONFIGS)
def test_causal(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = Transformer(cfg.model_copy(update={"init_std": 0.2}))
    tokens = torch.randint(0, 64, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 64
    with torch.no_grad():
        a, b = model(tokens)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_update_router_bias_moves_toward_balance() -> None:
    cfg = small(n_layers=3, first_k_dense=1)
    model = Transformer(cfg)
    load = torch.tensor([[30.0, 2, 2, 2, 2, 2, 2, 3], [4.0, 4, 4, 4, 4, 4, 4, 4]])
    model.update_router_bias(load, 1e-3)
    first, second = (m.e_score_bias for m in model.moe_layers())
    assert first[0] < 0 and torch.all(first[1:7] > 0) and first[7] > 0
    assert torch.all(second == 0)
    with pytest.raises(ValueError, match="MoE layers"):
        model.update_router_bias(load[:1], 1e-3)


def test_autocast_bf16_forward() -> None:
    torch.manual_seed(0)
    model = Transformer(small())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, t = model(torch.randint(0, 64, (2, 8)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert t.max_logits.dtype == torch.float32 and t.expert_load.dtype == torch.float32


def test_sequence_longer_than_max_seq_len_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        Transformer(small(max_seq_len=8))(torch.zeros(1, 9, dtype=torch.long))


def test_softmax_scale() -> None:
    mla = build_attention(small())
    mha = build_attention(small(attention={"kind": "mha", "n_heads": 4}))
    assert mla.softmax_scale == pytest.approx(1 / math.sqrt(12))
    assert mha.softmax_scale == pytest.approx(1 / math.sqrt(8))
