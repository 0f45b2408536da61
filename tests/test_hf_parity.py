"""Numerical parity with HF transformers' ``DeepseekV3ForCausalLM`` (float32, CPU, eager attention).

HF config choices that make HF compute what our model computes:
- ``rope_interleave=False``: HF's default (True) reads the rotary dims as interleaved pairs
  (x0, x1), (x2, x3), ...; ours pairs dim i with i + R/2 (``rotate_half``), which is HF's False.
- ``rope_parameters={"rope_type": "default", ...}``: no YaRN scaling, so no mscale on the
  softmax scale (ours is 1/sqrt(Dn + R)).
- ``num_mtp_layers=0``, ``attention_bias=False``, ``rms_norm_eps=1e-6`` (HF's q/kv latent norms
  always use 1e-6; ours use ``norm_eps``, so the two must agree).
HF has only sigmoid scores, so the softmax router is not checked here (see test_moe.py).
"""

from __future__ import annotations

import pytest
import torch

from harness.config import ModelConfig
from harness.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

from harness.bench.hf import from_hf_state, to_hf_state  # noqa: E402
from harness.bench.hf import hf_config as bench_hf_config  # noqa: E402

V, D, T, B = 96, 32, 12, 2


def our_config(
    first_k_dense: int, n_groups: int, topk_groups: int, q_lora_rank: int
) -> ModelConfig:
    return ModelConfig(
        d_model=D,
        n_layers=3,
        first_k_dense=first_k_dense,
        dense_ffn_dim=48,
        vocab_size=V,
        max_seq_len=64,
        norm_eps=1e-6,
        attention={
            "kind": "mla",
            "n_heads": 4,
            "q_lora_rank": q_lora_rank,
            "kv_lora_rank": 16,
            "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 4,
            "v_head_dim": 6,
            "rope_theta": 10000.0,
        },
        moe={
            "n_routed_experts": 8,
            "top_k": 3,
            "n_shared": 2,
            "expert_ffn_dim": 12,
            "n_groups": n_groups,
            "topk_groups": topk_groups,
            "routed_scaling_factor": 2.5,
            "norm_topk_prob": True,
        },
    )


def hf_config(cfg: ModelConfig) -> transformers.DeepseekV3Config:
    """The bench's mapping of our config onto HF's, with the reference (eager) kernels."""
    return bench_hf_config(cfg, experts_impl="eager", attn_impl="eager")


def hf_to_ours(hf: torch.nn.Module, ours: Transformer) -> None:
    """Copy every HF weight (and the router bias) into our module, through the bench's mapping."""
    ours.load_state_dict(from_hf_state(hf.state_dict(), ours.state_dict()), strict=True)


def randomise_(hf: torch.nn.Module, seed: int) -> None:
    """O(1)-scale random weights (so logits differ by O(1)), random norm gains and router bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name, buf in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.3 * torch.randn(buf.shape, generator=g))


CASES = [
    pytest.param(0, 1, 1, 0, id="flat-k0"),
    pytest.param(1, 1, 1, 12, id="flat-k1-qlora"),
    pytest.param(3, 1, 1, 0, id="dense-k3"),
    pytest.param(0, 4, 2, 12, id="grouped-k0-qlora"),
    pytest.param(1, 4, 2, 0, id="grouped-k1"),
]


@pytest.mark.parametrize(("first_k_dense", "n_groups", "topk_groups", "q_lora_rank"), CASES)
def test_logits_match_hf(
    first_k_dense: int, n_groups: int, topk_groups: int, q_lora_rank: int
) -> None:
    cfg = our_config(first_k_dense, n_groups, topk_groups, q_lora_rank)
    torch.manual_seed(0)
    hf = transformers.DeepseekV3ForCausalLM(hf_config(cfg)).eval()
    randomise_(hf, seed=first_k_dense + 10 * n_groups + q_lora_rank)
    ours = Transformer(cfg).eval()
    hf_to_ours(hf, ours)
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        got, telemetry = ours(tokens)
    assert expected.abs().std() > 0.3  # a real test: logits are O(1), not all ~0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert telemetry.expert_load.shape == (cfg.n_moe_layers, cfg.moe.n_routed_experts)


@pytest.mark.parametrize(("first_k_dense", "n_groups", "topk_groups", "q_lora_rank"), CASES)
def test_weight_mapping_round_trips(
    first_k_dense: int, n_groups: int, topk_groups: int, q_lora_rank: int
) -> None:
    """The bench's direction (ours to HF, ``to_hf_state``) inverts the one checked above: every
    HF tensor comes back under its own name, bit for bit."""
    cfg = our_config(first_k_dense, n_groups, topk_groups, q_lora_rank)
    hf = transformers.DeepseekV3ForCausalLM(hf_config(cfg))
    randomise_(hf, seed=5)
    ours = Transformer(cfg)
    hf_to_ours(hf, ours)
    expected, back = hf.state_dict(), to_hf_state(ours.state_dict())
    assert set(back) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(back[name], tensor, rtol=0, atol=0, msg=name)


def test_router_bias_changes_selection_only() -> None:
    """The copied nonzero bias matters: zeroing it on both sides changes the logits, yet they
    still agree, so the bias picks experts and never enters the gate weights."""
    cfg = our_config(1, 4, 2, 0)
    torch.manual_seed(0)
    hf = transformers.DeepseekV3ForCausalLM(hf_config(cfg)).eval()
    randomise_(hf, seed=3)
    ours = Transformer(cfg).eval()
    hf_to_ours(hf, ours)
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        biased = ours(tokens)[0]
        for moe in ours.moe_layers():
            moe.e_score_bias.zero_()
        for layer in hf.model.layers[cfg.first_k_dense :]:
            layer.mlp.gate.e_score_correction_bias.zero_()
        unbiased, expected = ours(tokens)[0], hf(input_ids=tokens).logits
    assert (biased - unbiased).abs().max() > 1e-2
    torch.testing.assert_close(unbiased, expected, rtol=1e-5, atol=1e-5)
