"""Our weights in HF transformers' DeepSeek-V3 modules: the one name mapping, both directions.

``transformers`` is a dev dependency, imported lazily here. The config choices that make HF
compute what our model computes (``rope_interleave=False``, default RoPE, no MTP layer, no
attention bias) are in :func:`hf_config`; ``tests/test_hf_parity.py`` checks that HF's logits
equal ours through this module's mapping. Every tensor is copied one to one under a new name
(:func:`hf_name`), except the routed experts: HF keeps them stacked as ``gate_up_proj``
(E, 2F, D) = [w1 | w3] rows and ``down_proj`` (E, D, F) = w2. :func:`to_hf_state` and
:func:`from_hf_state` convert whole state dicts.

HF experts implementations (``config._experts_implementation``, transformers 5.x
``integrations/moe.py``): ``eager`` (loop over hit experts with one-hot masks), ``grouped_mm``
(the default: sort by expert, ``torch.nn.functional.grouped_mm``), ``batched_mm`` (gathers one
weight matrix per (token, slot): memory S x 3 F D), and CUDA-only kernel-hub paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from harness.config import ModelConfig
    from harness.model.moe import MoE
    from harness.model.transformer import Transformer

EXPERT_IMPLS = ("eager", "grouped_mm", "batched_mm")
"""HF experts implementations that run on any device (deepgemm / sonicmoe need CUDA kernels)."""

_TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
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
_SWIGLU = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_ROUTED = {"gate.weight": "gate.weight", "e_score_bias": "gate.e_score_correction_bias",
           "experts.w1": "experts.gate_up_proj", "experts.w3": "experts.gate_up_proj",
           "experts.w2": "experts.down_proj"}
_STACKED = ("experts.w1", "experts.w3")
"""Our routed-expert stacks that share one HF tensor: ``gate_up_proj`` = cat((w1, w3), dim=1)."""


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


def ffn_name(name: str) -> str:
    """HF name of a tensor of our FFN module (MoE or dense SwiGLU), both relative to the FFN.

    ``experts.w1`` and ``experts.w3`` both map to ``experts.gate_up_proj`` (see :data:`_STACKED`).
    """
    if name in _ROUTED:
        return _ROUTED[name]
    shared = name.startswith("shared.")
    weight, _, rest = name.removeprefix("shared.").partition(".")
    if weight not in _SWIGLU:
        raise KeyError(f"no HF name for FFN tensor {name!r}")
    return ("shared_experts." if shared else "") + f"{_SWIGLU[weight]}.{rest}"


def hf_name(name: str) -> str:
    """HF ``DeepseekV3ForCausalLM`` state-dict name of a tensor of our ``Transformer``."""
    if name in _TOP:
        return _TOP[name]
    parts = name.split(".", 3)  # blocks, i, module, rest
    if len(parts) != 4 or parts[0] != "blocks":
        raise KeyError(f"no HF name for {name!r}")
    _, i, module, rest = parts
    head = f"model.layers.{i}."
    if module in _BLOCK:
        return head + f"{_BLOCK[module]}.{rest}"
    if module == "attn":
        sub, _, tail = rest.partition(".")
        if sub in _ATTN:
            return head + f"self_attn.{_ATTN[sub]}.{tail}"
    if module == "ffn":
        return head + "mlp." + ffn_name(rest)
    raise KeyError(f"no HF name for {name!r}")


def to_hf_state(
    state: Mapping[str, Tensor], name_of: Callable[[str], str] = hf_name
) -> dict[str, Tensor]:
    """HF state dict of our ``state`` (detached; the expert stacks w1, w3 concatenated)."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if name.endswith(_STACKED[1]):
            continue  # joined with its w1 below
        if name.endswith(_STACKED[0]):
            t = torch.cat((t, state[name.removesuffix(_STACKED[0]) + _STACKED[1]]), dim=1)
        out[name_of(name)] = t.detach()
    return out


def from_hf_state(
    hf_state: Mapping[str, Tensor],
    names: Iterable[str],
    name_of: Callable[[str], str] = hf_name,
) -> dict[str, Tensor]:
    """Our state dict for ``names`` from an HF state dict: the inverse of :func:`to_hf_state`.

    Raises KeyError when an HF tensor is left over (one our model would not hold).
    """
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for name in names:
        key = name_of(name)
        t = hf_state[key]
        used.add(key)
        if name.endswith(_STACKED):  # gate_up_proj (E, 2F, D) = [w1 | w3] rows
            half = t.shape[1] // 2
            t = t[:, :half] if name.endswith(_STACKED[0]) else t[:, half:]
        out[name] = t
    if left := sorted(set(hf_state) - used):
        raise KeyError(f"HF tensors with no counterpart in our model: {left}")
    return out


def hf_moe_from_ours(ours: MoE, cfg: ModelConfig, experts_impl: str = "grouped_mm") -> Any:
    """A ``DeepseekV3MoE`` with our layer's router, bias, routed and shared expert weights."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    if ours.shared is None:
        raise ValueError("HF DeepseekV3MoE always has shared experts: moe.n_shared must be >= 1")
    hf = DeepseekV3MoE(hf_config(cfg, experts_impl))
    hf.load_state_dict(to_hf_state(ours.state_dict(), ffn_name), strict=True)
    return hf.to(ours.gate.weight.device)


def hf_model_from_ours(
    ours: Transformer, experts_impl: str = "grouped_mm", attn_impl: str = "sdpa"
) -> Any:
    """A ``DeepseekV3ForCausalLM`` holding a copy of every weight of ``ours`` (same device)."""
    import transformers

    hf = transformers.DeepseekV3ForCausalLM(hf_config(ours.cfg, experts_impl, attn_impl))
    hf.load_state_dict(to_hf_state(ours.state_dict()), strict=True)
    return hf.to(ours.embed.weight.device)
