"""Causal self-attention: MLA (DeepSeek-V2 §2.1, used by DeepSeek-V3 and Kimi K2) and plain MHA.

Both return the per-head max pre-softmax logit of the step, which QK-Clip needs (Kimi K2 report,
arXiv 2507.20534, Algorithm 1): S_max^h = max over batch and causal pairs (j <= i) of
q_i^h . k_j^h * softmax_scale. Fused kernels do not expose it, so it is recomputed from the q, k
already in hand, without grad and in chunks (one extra QK^T matmul, forward only).

Shape legend: B batch, T tokens per sequence, D model width, H heads, Dn non-rotary q/k dim per
head (qk_nope_head_dim), R rotary dim (qk_rope_head_dim; MHA: the whole head), Dv value dim per
head, Dq = Dn + R, C latent KV rank (kv_lora_rank), Cq query rank (q_lora_rank).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import MAX_LOGIT_CHUNK_ELEMS
from harness.model.layers import RMSNorm, apply_rope, rope_cos_sin

if TYPE_CHECKING:
    from harness.config import ModelConfig


@torch.no_grad()
def causal_max_logits(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Per-head max over batch and causal pairs of ``q_i . k_j * scale``: (B, H, T, Dq) -> (H,).

    Exact: the same logits the attention softmax sees, one (T, T) block per (batch, head), masked
    above the diagonal with -inf fused into the matmul (``baddbmm``), chunked over batch x heads
    so that at most ``MAX_LOGIT_CHUNK_ELEMS`` logits exist at once. Returned in float32.
    """
    B, H, T, Dq = q.shape
    q_ = q.reshape(B * H, T, Dq)  # (B*H, T, Dq)
    k_ = k.reshape(B * H, T, Dq).transpose(1, 2)  # (B*H, Dq, T)
    mask_TT = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    chunk = max(1, MAX_LOGIT_CHUNK_ELEMS // (T * T))
    maxes = [
        torch.baddbmm(mask_TT, q_[s : s + chunk], k_[s : s + chunk], alpha=scale).amax(dim=(1, 2))
        for s in range(0, B * H, chunk)
    ]
    return torch.cat(maxes).view(B, H).amax(dim=0).float()  # (H,)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Causal softmax attention and its per-head max logit.

    q, k (B, H, T, Dq), v (B, H, T, Dv) -> out (B, H, T, Dv), max_logit (H,) float32 detached.
    ``F.scaled_dot_product_attention`` picks a fused kernel (flash on CUDA and on CPU). Flash
    wants one head dim for q, k and v, so when Dq != Dv (MLA) the smaller side is zero-padded
    (as HF does for flash attention); otherwise CPU falls back to the unfused math kernel
    (1.1-1.9x slower, measured here). Zero dims change neither scores nor outputs. FLOPs beyond
    the accounting's 2 * H * (Dq + Dv) * T per token per layer (forward): the padding,
    2 * H * T * |Dq - Dv|, and the max-logit pass, 2 * H * Dq * T (forward only; telemetry).
    """
    Dq, Dv = q.shape[-1], v.shape[-1]
    width = max(Dq, Dv)
    if Dq == Dv:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        qp, kp = F.pad(q, (0, width - Dq)), F.pad(k, (0, width - Dq))  # (B, H, T, width)
        vp = F.pad(v, (0, width - Dv))  # (B, H, T, width)
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale)[..., :Dv]
    return out, causal_max_logits(q, k, scale)


class _SelfAttention(nn.Module):
    """What MLA and MHA share: ``qkv`` gives rotated q, k and v, then causal attention, the
    per-head max logit, and ``o_proj`` over the concatenated heads."""

    n_heads: int
    v_head_dim: int
    softmax_scale: float
    o_proj: nn.Linear

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> output (B, T, D), max_logit (H,) float32 detached."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x)  # (B, H, T, Dq), (B, H, T, Dq), (B, H, T, Dv)
        out, max_logit = causal_attention(q, k, v, self.softmax_scale)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim)  # (B, T, H*Dv)
        return self.o_proj(out), max_logit


class MLA(_SelfAttention):
    """Multi-head latent attention with decoupled RoPE (DeepSeek-V2 §2.1.2-2.1.3, eqs. 9-19).

    Keys and values come from a latent c^KV = kv_a_norm(W^DKV x) of rank C:
    k^C_h = W^UK_h c^KV, v_h = W^UV_h c^KV (``kv_b_proj``, rows per head [k_nope | v]). One rotary
    key k^R = RoPE(W^KR x) is shared by all heads (last R rows of ``kv_a_proj``). Queries are
    [q^C_h | q^R_h] per head, from x directly (``q_proj``) or through a rank-Cq bottleneck
    (``q_a_proj`` -> ``q_a_norm`` -> ``q_b_proj``). softmax_scale = 1/sqrt(Dn + R).
    Weight layout = HF ``DeepseekV3Attention`` (there ``kv_a_proj_with_mqa``, ``q_a_layernorm``,
    ``kv_a_layernorm``; HF gives those two norms eps 1e-6, here they use ``cfg.norm_eps``).
    Training form: keys and values are expanded per head, not absorbed into the query.
    """

    kind: Literal["mla"] = "mla"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        a, D = cfg.attention, cfg.d_model
        self.n_heads = a.n_heads
        self.q_lora_rank = a.q_lora_rank
        self.kv_lora_rank = a.kv_lora_rank
        self.qk_nope_head_dim = a.qk_nope_head_dim
        self.qk_rope_head_dim = a.qk_rope_head_dim
        self.v_head_dim = a.v_head_dim
        self.rope_theta = a.rope_theta
        qk_head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim
        self.softmax_scale = qk_head_dim**-0.5
        H = a.n_heads
        if a.q_lora_rank:
            self.q_a_proj = nn.Linear(D, a.q_lora_rank, bias=False)
            self.q_a_norm = RMSNorm(a.q_lora_rank, cfg.norm_eps)
            self.q_b_proj = nn.Linear(a.q_lora_rank, H * qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(D, H * qk_head_dim, bias=False)
        self.kv_a_proj = nn.Linear(D, a.kv_lora_rank + a.qk_rope_head_dim, bias=False)
        self.kv_a_norm = RMSNorm(a.kv_lora_rank, cfg.norm_eps)
        kv_b_rows = H * (a.qk_nope_head_dim + a.v_head_dim)
        self.kv_b_proj = nn.Linear(a.kv_lora_rank, kv_b_rows, bias=False)
        self.o_proj = nn.Linear(H * a.v_head_dim, D, bias=False)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys (B, H, T, Dq) and values (B, H, T, Dv) from x (B, T, D)."""
        B, T, _ = x.shape
        H, Dn, R, Dv = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x))) if self.q_lora_rank else self.q_proj(x)
        q = q.view(B, T, H, Dn + R).transpose(1, 2)  # (B, H, T, Dq)
        q_nope, q_rope = q.split([Dn, R], dim=-1)  # (B, H, T, Dn), (B, H, T, R)
        c_kv, k_rope = self.kv_a_proj(x).split([self.kv_lora_rank, R], dim=-1)  # (B,T,C), (B,T,R)
        kv = self.kv_b_proj(self.kv_a_norm(c_kv)).view(B, T, H, Dn + Dv).transpose(1, 2)
        k_nope, v = kv.split([Dn, Dv], dim=-1)  # (B, H, T, Dn), (B, H, T, Dv)
        cos, sin = rope_cos_sin(T, R, self.rope_theta, x.device, q.dtype)
        q_rope = apply_rope(q_rope, cos, sin)
        k_rope = apply_rope(k_rope.unsqueeze(1), cos, sin)  # (B, 1, T, R), shared by all heads
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, Dq)
        k = torch.cat((k_nope, k_rope.expand(B, H, T, R)), dim=-1)  # (B, H, T, Dq)
        return q, k, v

class MHA(_SelfAttention):
    """Multi-head attention (Vaswani et al. 2017) with RoPE over the whole head dim.

    ``q_proj``, ``k_proj``, ``v_proj`` (H*hd, D) and ``o_proj`` (D, H*hd), head h owning rows
    h*hd:(h+1)*hd; hd = ``cfg.mha_head_dim``; softmax_scale = 1/sqrt(hd).
    """

    kind: Literal["mha"] = "mha"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, H, hd = cfg.d_model, cfg.attention.n_heads, cfg.mha_head_dim
        self.n_heads = H
        self.head_dim = self.v_head_dim = hd
        self.rope_theta = cfg.attention.rope_theta
        self.softmax_scale = hd**-0.5
        self.q_proj = nn.Linear(D, H * hd, bias=False)
        self.k_proj = nn.Linear(D, H * hd, bias=False)
        self.v_proj = nn.Linear(D, H * hd, bias=False)
        self.o_proj = nn.Linear(H * hd, D, bias=False)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys and values, each (B, H, T, hd), from x (B, T, D)."""
        B, T, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        v = self.v_proj(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        cos, sin = rope_cos_sin(T, hd, self.rope_theta, x.device, q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

def build_attention(cfg: ModelConfig) -> MLA | MHA:
    """The attention module ``cfg.attention.kind`` names."""
    return MLA(cfg) if cfg.attention.kind == "mla" else MHA(cfg)
