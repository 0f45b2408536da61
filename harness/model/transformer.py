"""The decoder: embedding, pre-norm blocks (attention + dense or MoE FFN), final norm, LM head.

Layout of DeepSeek-V3 (arXiv 2412.19437 §2) and Kimi K2 (arXiv 2507.20534 §2.3, Table 2): the
first ``first_k_dense`` blocks have a dense SwiGLU FFN, the rest an MoE FFN. Each forward also
returns the step's telemetry: per-head max attention logits (for QK-Clip), tokens per expert (for
the aux-loss-free bias update) and the optional sequence-wise balance loss.

Shape legend: B batch, T tokens per sequence, D model width, V vocabulary, L layers, H heads,
Lm MoE layers, E routed experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from harness.model.attention import MHA, MLA, build_attention
from harness.model.layers import RMSNorm, SwiGLU
from harness.model.moe import Experts, MoE

if TYPE_CHECKING:
    from harness.config import ModelConfig


@dataclass(frozen=True)
class Telemetry:
    """What one forward pass reports besides logits (all detached except ``aux_loss``)."""

    max_logits: Tensor  # (L, H) float32: max over batch and causal pairs of q.k * softmax_scale
    expert_load: Tensor  # (Lm, E) float32: tokens routed to each expert in this forward
    aux_loss: Tensor  # 0-d: sum over MoE layers of seq_aux_alpha * balance loss (0 when alpha 0)


class Block(nn.Module):
    """Pre-norm block: ``x + attn(attn_norm(x))``, then ``+ ffn(ffn_norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        D = cfg.d_model
        self.attn_norm = RMSNorm(D, cfg.norm_eps)
        self.attn = build_attention(cfg)
        self.ffn_norm = RMSNorm(D, cfg.norm_eps)
        self.ffn: SwiGLU | MoE = (
            SwiGLU(D, cfg.dense_ffn_dim) if layer_idx < cfg.first_k_dense else MoE(cfg)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """x (B, T, D) -> x (B, T, D), max_logit (H,), (load (E,), aux loss) for MoE blocks."""
        h, max_logit = self.attn(self.attn_norm(x))
        x = x + h
        if isinstance(self.ffn, MoE):
            y, load, aux = self.ffn(self.ffn_norm(x))
            return x + y, max_logit, (load, aux)
        return x + self.ffn(self.ffn_norm(x)), max_logit, None


class Transformer(nn.Module):
    """Decoder-only LM built from a :class:`~harness.config.ModelConfig`.

    Weights are N(0, ``init_std``), norm gains 1, router bias 0; deterministic given
    ``torch.manual_seed``. With ``tie_embeddings`` the LM head weight is the embedding weight.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, V = cfg.d_model, cfg.vocab_size
        self.embed = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(D, cfg.norm_eps)
        self.lm_head = nn.Linear(D, V, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise every weight (module order, so the same seed gives the same model)."""
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, Experts):
                m.reset_parameters(std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, MoE):
                m.e_score_bias.zero_()

    def forward(self, tokens: Tensor) -> tuple[Tensor, Telemetry]:
        """tokens (B, T) long -> logits (B, T, V) and the step's :class:`Telemetry`."""
        seq_len = tokens.shape[1]
        if seq_len > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_seq_len ({self.cfg.max_seq_len})"
            )
        x = self.embed(tokens)  # (B, T, D)
        max_logits, loads, auxes = [], [], []
        for block in self.blocks:
            x, max_logit, moe_stats = block(x)
            max_logits.append(max_logit)
            if moe_stats is not None:
                loads.append(moe_stats[0])
                auxes.append(moe_stats[1])
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        E = self.cfg.moe.n_routed_experts
        telemetry = Telemetry(
            max_logits=torch.stack(max_logits),  # (L, H)
            expert_load=torch.stack(loads) if loads else torch.zeros(0, E, device=x.device),
            aux_loss=torch.stack(auxes).sum() if auxes else torch.zeros((), device=x.device),
        )
        return logits, telemetry

    def moe_layers(self) -> list[MoE]:
        """The MoE FFNs, in layer order (row i of ``Telemetry.expert_load`` is layer i here)."""
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]

    def attention_modules(self) -> list[MLA | MHA]:
        """The per-layer attention modules, in layer order (QK-Clip rescales their weights)."""
        return [b.attn for b in self.blocks]

    @torch.no_grad()
    def update_router_bias(self, expert_load: Tensor, rate: float) -> None:
        """Aux-loss-free bias step for every MoE layer from its load (Lm, E) over the step.

        b_i += rate * sign(mean load - load_i) (DeepSeek-V3 §2.1.2); ``rate`` is
        ``MoEConfig.bias_rate(step)``. Call after each optimizer step with the load summed over
        the step's micro-batches.
        """
        moes = self.moe_layers()
        if expert_load.shape[0] != len(moes):
            raise ValueError(
                f"expert_load has {expert_load.shape[0]} rows, model has {len(moes)} MoE layers"
            )
        for moe, load_E in zip(moes, expert_load, strict=True):
            moe.update_bias(load_E, rate)
