"""Our weights in HF transformers' DeepSeek-V3 modules, for side-by-side speed comparisons.

``transformers`` is a dev dependency, imported lazily here. The config choices that make HF
compute what our model computes are those of ``tests/test_hf_parity.py`` (``rope_interleave=False``,
default RoPE, no MTP layer, no attention bias); the weight mapping is the inverse of that test's
``hf_to_ours``: HF keeps the routed experts stacked as ``gate_up_proj`` (E, 2F, D) = [w1 | w3]
rows and ``down_proj`` (E, D, F) = w2.

HF experts implementations (``config._experts_implementation``, transformers 5.x
``integrations/moe.py``): ``eager`` (loop over hit experts with one-hot masks), ``grouped_mm``
(the default: sort by expert, ``torch.nn.functional.grouped_mm``), ``batched_mm`` (gathers one
weight matrix per (token, slot): memory S x 3 F D), and CUDA-only kernel-hub paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from harness.config import ModelConfig
    from harness.model.moe import MoE
    from harness.model.transformer import Transformer

EXPERT_IMPLS = ("eager", "grouped_mm", "batched_mm")
"""HF experts implementations that run on any device (deepgemm / sonicmoe need CUDA kernels)."""


def hf_config(cfg: ModelConfig, experts_impl: str = "grouped_mm", attn_impl: str = "sdpa") -> Any:
    """A ``transformers.DeepseekV3Config`` for ``cfg`` (MLA + MoE; raises for MHA configs)."""
    import transformers

    a, m = cfg.attention, cfg.moe
    if a.kind != "mla":
        raise ValueError("HF DeepseekV3 has MLA attention only: attention.kind must be mla")
    hf = transformers.DeepseekV3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.dense_ffn_dim,
        moe_intermediate_size=m.expert_ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=a.n_heads,
        num_key_value_heads=a.n_heads,
        n_shared_experts=m.n_shared,
        n_routed_experts=m.n_routed_experts,
        routed_scaling_factor=m.routed_scaling_factor,
        kv_lora_rank=a.kv_lora_rank,
        q_lora_rank=a.q_lora_rank or None,
        qk_rope_head_dim=a.qk_rope_head_dim,
        v_head_dim=a.v_head_dim,
        qk_nope_head_dim=a.qk_nope_head_dim,
        n_group=m.n_groups,
        topk_group=m.topk_groups,
        num_experts_per_tok=m.top_k,
        first_k_dense_replace=cfg.first_k_dense,
        norm_topk_prob=m.norm_topk_prob,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
        rope_interleave=False,
        tie_word_embeddings=cfg.tie_embeddings,
        num_mtp_layers=0,
        attention_bias=False,
        use_cache=False,
        attn_implementation=attn_impl,
    )
    set_experts_impl(hf, experts_impl)
    return hf


def set_experts_impl(config: Any, impl: str) -> None:
    """Switch every HF experts module built from ``config`` to ``impl`` (read at each forward)."""
    if impl not in ("eager", *EXPERT_IMPLS, "deepgemm", "sonicmoe"):
        raise ValueError(f"unknown HF experts implementation {impl!r}")
    config._experts_implementation = impl


def _moe_state(ours: MoE, prefix: str) -> dict[str, Tensor]:
    """HF ``DeepseekV3MoE`` state of our MoE layer under ``prefix`` (e.g. ``"mlp."``)."""
    e = ours.experts
    out = {
        prefix + "gate.weight": ours.gate.weight.detach().float(),
        prefix + "gate.e_score_correction_bias": ours.e_score_bias.detach(),
        prefix + "experts.gate_up_proj": torch.cat((e.w1.detach(), e.w3.detach()), dim=1),
        prefix + "experts.down_proj": e.w2.detach(),
    }
    if ours.shared is not None:
        for ours_name, hf_name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            w = getattr(ours.shared, ours_name).weight.detach()
            out[prefix + f"shared_experts.{hf_name}.weight"] = w
    return out


def hf_moe_from_ours(ours: MoE, cfg: ModelConfig, experts_impl: str = "grouped_mm") -> Any:
    """A ``DeepseekV3MoE`` with our layer's router, bias, routed and shared expert weights."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    if ours.shared is None:
        raise ValueError("HF DeepseekV3MoE always has shared experts: moe.n_shared must be >= 1")
    hf = DeepseekV3MoE(hf_config(cfg, experts_impl))
    hf.load_state_dict(_moe_state(ours, ""), strict=True)
    return hf.to(ours.gate.weight.device)


_ATTN = {
    "q_proj": "q_proj",
    "q_a_proj": "q_a_proj",
    "q_a_norm": "q_a_layernorm",
    "q_b_proj": "q_b_proj",
    "kv_a_proj": "kv_a_proj_with_mqa",
    "kv_a_norm": "kv_a_layernorm",
    "kv_b_proj": "kv_b_proj",
    "o_proj": "o_proj",
}


def hf_model_from_ours(
    ours: Transformer, experts_impl: str = "grouped_mm", attn_impl: str = "sdpa"
) -> Any:
    """A ``DeepseekV3ForCausalLM`` holding a copy of every weight of ``ours`` (same device)."""
    import transformers

    from harness.model.moe import MoE

    cfg = ours.cfg
    hf = transformers.DeepseekV3ForCausalLM(hf_config(cfg, experts_impl, attn_impl))
    sd: dict[str, Tensor] = {
        "model.embed_tokens.weight": ours.embed.weight.detach(),
        "model.norm.weight": ours.norm.weight.detach(),
        "lm_head.weight": ours.lm_head.weight.detach(),
    }
    for i, block in enumerate(ours.blocks):
        h = f"model.layers.{i}."
        sd[h + "input_layernorm.weight"] = block.attn_norm.weight.detach()
        sd[h + "post_attention_layernorm.weight"] = block.ffn_norm.weight.detach()
        for ours_name, hf_name in _ATTN.items():
            mod = getattr(block.attn, ours_name, None)
            if mod is not None:
                sd[h + f"self_attn.{hf_name}.weight"] = mod.weight.detach()
        if isinstance(block.ffn, MoE):
            sd.update(_moe_state(block.ffn, h + "mlp."))
        else:
            for ours_name, hf_name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                sd[h + f"mlp.{hf_name}.weight"] = getattr(block.ffn, ours_name).weight.detach()
    hf.load_state_dict(sd, strict=True)
    return hf.to(ours.embed.weight.device)
