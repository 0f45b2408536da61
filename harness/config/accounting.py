"""Parameter and FLOP accounting from a ModelConfig alone (no model is built).

Conventions (stated once, used everywhere):
- ``total`` counts every trainable parameter: embedding, LM head (unless tied), norms, attention,
  dense FFNs, routers, shared and routed experts. The aux-loss-free router bias is a buffer, not a
  parameter. DeepSeek-V3's config gives 671.03B total this way (no MTP layer).
- ``active`` counts the parameters one token uses: all of the above except that each MoE layer
  contributes its router, its shared experts and ``top_k`` routed experts. Embedding and LM head
  are included (DeepSeek-V3: 37.55B; 35.70B without them).
- ``embedding`` is the input embedding plus the untied LM head.
- Training FLOPs per token are 3x the forward: 2 FLOPs per active matmul weight (LM head and
  router included, the embedding lookup excluded) plus attention scores and values,
  2 * n_heads * (d_qk + d_v) * seq_len per layer (Kaplan et al. 2020 Table 1; Hoffmann et al. 2022
  Appendix F count the full context, as dense attention kernels compute it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config.trial import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a model config (see the module docstring for conventions)."""

    total: int
    active: int
    embedding: int

    @property
    def active_non_embedding(self) -> int:
        """Active parameters less embedding and LM head: the N of 6ND in MoE papers."""
        return self.active - self.embedding


def attention_params(cfg: ModelConfig) -> int:
    """Weights of one attention block (no biases)."""
    a, D = cfg.attention, cfg.d_model
    H = a.n_heads
    if a.kind == "mha":
        hd = cfg.mha_head_dim
        return 4 * D * H * hd
    d_qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    if a.q_lora_rank:
        q = D * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * H * d_qk  # q_a, q_a_norm, q_b
    else:
        q = D * H * d_qk
    kv = D * (a.kv_lora_rank + a.qk_rope_head_dim)  # kv_a_proj_with_mqa: latent + shared k^R
    kv += a.kv_lora_rank  # kv_a_norm
    kv += a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim)  # kv_b_proj
    o = H * a.v_head_dim * D
    return q + kv + o


def swiglu_params(d_model: int, hidden: int) -> int:
    """Gate, up and down projections of a SwiGLU FFN."""
    return 3 * d_model * hidden


def moe_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active) weights of one MoE FFN: router, shared and routed experts."""
    m, D = cfg.moe, cfg.d_model
    router = m.n_routed_experts * D
    shared = swiglu_params(D, m.expert_ffn_dim * m.n_shared) if m.n_shared else 0
    expert = swiglu_params(D, m.expert_ffn_dim)
    return router + shared + m.n_routed_experts * expert, router + shared + m.top_k * expert


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Total, active and embedding parameters of ``cfg``."""
    D, V = cfg.d_model, cfg.vocab_size
    embedding = V * D * (1 if cfg.tie_embeddings else 2)
    per_layer = attention_params(cfg) + 2 * D  # two RMSNorm gains
    dense = swiglu_params(D, cfg.dense_ffn_dim)
    moe_total, moe_active = moe_params(cfg)
    shared = embedding + D + cfg.n_layers * per_layer + cfg.first_k_dense * dense  # + final norm
    return ParamCounts(
        total=shared + cfg.n_moe_layers * moe_total,
        active=shared + cfg.n_moe_layers * moe_active,
        embedding=embedding,
    )


def attention_matmul_params(cfg: ModelConfig) -> int:
    """Weights of one attention block that take part in a matmul (norm gains excluded)."""
    a = cfg.attention
    norms = (a.q_lora_rank + a.kv_lora_rank) if a.kind == "mla" else 0
    return attention_params(cfg) - norms


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per active matmul weight plus attention over the context."""
    a, D = cfg.attention, cfg.d_model
    _, moe_active = moe_params(cfg)
    matmul = (
        cfg.n_layers * attention_matmul_params(cfg)
        + cfg.first_k_dense * swiglu_params(D, cfg.dense_ffn_dim)
        + cfg.n_moe_layers * moe_active
        + cfg.vocab_size * D  # LM head (tied or not, the matmul happens)
    )
    if a.kind == "mha":
        d_qk = d_v = cfg.mha_head_dim
    else:
        d_qk, d_v = a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim
    attn = cfg.n_layers * 2 * a.n_heads * (d_qk + d_v) * seq_len
    return 2.0 * matmul + attn


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)
