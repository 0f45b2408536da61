"""Small building blocks: RMSNorm, rotary position embedding (RoPE) and the SwiGLU FFN.

Shape legend: B batch, T tokens per sequence, H heads, D model width, F FFN hidden width,
R rotary dims (even), N = B*T flattened tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): ``w * x / sqrt(mean(x^2) + eps)``.

    Matches HF ``DeepseekV3RMSNorm``: the statistic is taken in float32 (float64 for float64
    inputs) and the result is cast back to the input dtype before the gain is applied.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(
    seq_len: int, dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos and sin tables (T, R) of RoPE (Su et al. 2021, RoFormer eq. 34), half-split layout.

    Frequency i (i < R/2) is ``theta^(-2i/R)``; both halves of the last dim carry the same angle,
    so dim i pairs with dim i + R/2 (the GPT-NeoX / Llama / HF ``rotate_half`` convention, i.e.
    HF DeepSeek-V3 with ``rope_interleave=False``). Computed on every call (cheap: T*R elements)
    in float32, or float64 for float64 models, so that bf16 never degrades the angles.
    """
    work = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=work, device=device) / dim))
    pos = torch.arange(seq_len, dtype=work, device=device)
    freqs = pos[:, None] * inv_freq[None, :]  # (T, R/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, R)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dim (halves of size R/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (..., T, R) by position: ``x * cos + rotate_half(x) * sin``; cos, sin (T, R)."""
    return x * cos + rotate_half(x) * sin


class SwiGLU(nn.Module):
    """SwiGLU FFN (Shazeer 2020): ``w2(silu(w1 x) * w3 x)``; w1 gate, w3 up, w2 down, no biases."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
