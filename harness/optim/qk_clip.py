"""QK-Clip (the "Clip" of MuonClip): rescale the query/key weights of heads whose logits ran away.

Kimi K2 report (arXiv 2507.20534), Algorithm 1. After the optimizer step, for each head ``h``
whose max pre-softmax logit ``S_h`` (from this step's forward, softmax scale included) exceeds
``tau``, let ``gamma = tau / S_h`` and rescale the weights that make that head's logit:

- MHA: the head's rows of ``W_q`` and ``W_k`` by ``sqrt(gamma)`` each;
- MLA: the head's non-rotary query rows ``q^C`` and non-rotary key rows ``k^C`` (the ``k_nope``
  rows of ``kv_b_proj``) by ``sqrt(gamma)``, its rotary query rows ``q^R`` by ``gamma``; the
  rotary key ``k^R`` (the last ``qk_rope_head_dim`` rows of ``kv_a_proj``) is shared by all heads
  and is left alone, as are the value rows of ``kv_b_proj``.

Each logit is ``q^C.k^C + q^R.k^R`` (MLA) or ``q.k`` (MHA, RoPE being a rotation), and all those
weights enter linearly after the last norm (``q_a_norm`` / ``kv_a_norm``), so every logit of a
clipped head is multiplied by exactly ``gamma``: on the same batch its max becomes ``tau``. Heads
with ``S_h <= tau`` (or a NaN ``S_h``) are multiplied by exactly 1, i.e. untouched. The clip works
on the weights only (not on optimizer state), so it applies to AdamW runs as well as to Muon.

Module layout used (``harness.model.attention``): ``kind`` ``"mha"`` with ``n_heads``,
``head_dim``, ``q_proj``, ``k_proj`` (head ``h`` owns rows ``h*hd:(h+1)*hd``); or ``"mla"`` with
``n_heads``, ``q_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``,
``q_proj`` (``q_lora_rank == 0``) or ``q_b_proj`` with rows per head ``[nope | rope]``, and
``kv_b_proj`` with rows per head ``[k_nope | v]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _scale_rows_(linear: nn.Linear, scale_rows: Tensor) -> None:
    """``linear.weight[i] *= scale_rows[i]`` (and the bias, if any) in place."""
    scale = scale_rows.to(device=linear.weight.device, dtype=linear.weight.dtype)
    linear.weight.mul_(scale[:, None])
    if linear.bias is not None:
        linear.bias.mul_(scale)


def _per_head(values_H: Tensor, width: int) -> Tensor:
    """Repeat each head's value over its ``width`` rows: ``[H] -> [H * width]``."""
    return values_H.repeat_interleave(width)


def qk_clip_attention_(attn: nn.Module, gamma_H: Tensor) -> None:
    """Apply per-head logit factors ``gamma_H`` ``[H]`` (1 = untouched) to one attention module."""
    sqrt_H = gamma_H.sqrt()
    kind: Any = getattr(attn, "kind", None)
    if kind == "mha":
        _scale_rows_(attn.q_proj, _per_head(sqrt_H, attn.head_dim))
        _scale_rows_(attn.k_proj, _per_head(sqrt_H, attn.head_dim))
    elif kind == "mla":
        H, nope, rope = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim
        q_scale = torch.cat(  # (H, nope + rope): q^C rows sqrt(gamma), q^R rows gamma
            [sqrt_H[:, None].expand(H, nope), gamma_H[:, None].expand(H, rope)], dim=1
        )
        q_linear = attn.q_proj if attn.q_lora_rank == 0 else attn.q_b_proj
        _scale_rows_(q_linear, q_scale.reshape(-1))
        ones_H = torch.ones_like(sqrt_H)
        kv_scale = torch.cat(  # (H, nope + v): k^C rows sqrt(gamma), value rows 1
            [sqrt_H[:, None].expand(H, nope), ones_H[:, None].expand(H, attn.v_head_dim)], dim=1
        )
        _scale_rows_(attn.kv_b_proj, kv_scale.reshape(-1))
    else:
        raise ValueError(f"QK-Clip supports attention kind 'mha' or 'mla', got {kind!r}")


@torch.no_grad()
def qk_clip_(model: nn.Module, tau: float, max_logits: Tensor) -> Tensor:
    """Clip every attention head of ``model`` whose max logit exceeded ``tau``; in place.

    ``max_logits``: float ``[n_layers, n_heads]``, this step's per-head max pre-softmax logit
    (``telemetry.max_logits`` of the forward); layers follow ``model.attention_modules()``.
    Call right after ``optimizer.step()``. Returns the number of clipped heads per layer, int64
    ``[n_layers]`` on ``max_logits``' device (no host sync here).
    """
    if tau <= 0:
        raise ValueError(f"tau ({tau}) must be > 0")
    attns = list(model.attention_modules())  # type: ignore[operator]
    if max_logits.ndim != 2 or max_logits.shape[0] != len(attns):
        raise ValueError(
            f"max_logits must be [n_layers={len(attns)}, n_heads], got {tuple(max_logits.shape)}"
        )
    smax_LH = max_logits.float()
    clipped = smax_LH > tau  # NaN compares False: left alone
    gamma = torch.where(clipped, tau / smax_LH, torch.ones_like(smax_LH))  # (L, H)
    for attn, gamma_H in zip(attns, gamma, strict=True):
        if gamma_H.shape[0] != attn.n_heads:
            raise ValueError(f"max_logits has {gamma_H.shape[0]} heads, model has {attn.n_heads}")
        qk_clip_attention_(attn, gamma_H)
    return clipped.sum(dim=1)
