"""Fine-grained mixture of experts with shared experts and aux-loss-free balancing.

Router (DeepSeek-V3 §2.1.2, eqs. 12-16): s = sigmoid(x W^T) (or softmax, DeepSeek-V2); experts
are chosen by top-k of s + b, where b is the aux-loss-free bias (selection only); optionally only
among the top ``topk_groups`` of ``n_groups`` groups, a group scored by the sum of its top-2
biased scores (group-limited routing). Gate weights are the unbiased s of the chosen experts,
normalised to sum 1 (``norm_topk_prob``) and times ``routed_scaling_factor``. Router math runs in
float32, also under autocast.

Dispatch: the N*K (token, slot) pairs are sorted by expert, so each expert sees a contiguous
slice; the experts run as ``torch._grouped_mm`` on CUDA, or as a loop over experts (not tokens)
on CPU, where it is the fastest path (measured on 2 CPU cores, 64 experts x 1024 tokens,
D 256 -> F 128: a loop of per-expert GEMMs 135 GFLOP/s, the grouped_mm CPU fallback 55). The CPU
loop is one autograd function with a hand-written backward that gathers each expert's rows and
adds its output straight into the tokens, so no (S, D) copy is made (``harness bench``, MoE layer
case). The gate weight scales each slot's hidden activation, and ``index_add`` sums the K slots
back into their tokens.

Shape legend: B batch, T tokens per sequence, N = B*T tokens, D model width, E routed experts,
K experts per token (top_k), F expert hidden width, G expert groups, S = N*K sorted slots.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.model.layers import SwiGLU

if TYPE_CHECKING:
    from harness.config import ModelConfig, MoEConfig

ExpertImpl = Literal["auto", "loop", "grouped_mm"]


@dataclass(frozen=True)
class Routing:
    """One router decision: chosen experts, their gate weights, and all scores."""

    idx: Tensor  # (N, K) long, chosen experts per token
    weight: Tensor  # (N, K) float32, gate weights (differentiable wrt the router)
    scores: Tensor  # (N, E) float32, unbiased sigmoid / softmax scores


def route(x_ND: Tensor, gate_ED: Tensor, bias_E: Tensor, cfg: MoEConfig) -> Routing:
    """Top-k routing of DeepSeek-V3 §2.1.2 (eqs. 12-16; group limit from §2.1.2 / V2 §2.2.2)."""
    N, E = x_ND.shape[0], gate_ED.shape[0]
    with torch.autocast(device_type=x_ND.device.type, enabled=False):
        logits_NE = F.linear(x_ND.float(), gate_ED.float())
    scores_NE = logits_NE.sigmoid() if cfg.score_func == "sigmoid" else logits_NE.softmax(dim=-1)
    choice_NE = scores_NE.detach() + bias_E.float()  # the bias steers selection only
    G = cfg.n_groups
    if G > 1:
        group_NG = choice_NE.view(N, G, E // G).topk(2, dim=-1).values.sum(dim=-1)  # (N, G)
        keep_NG = torch.zeros_like(group_NG, dtype=torch.bool)
        keep_NG.scatter_(1, group_NG.topk(cfg.topk_groups, dim=-1).indices, True)
        keep_NE = keep_NG.unsqueeze(-1).expand(N, G, E // G).reshape(N, E)  # (N, E)
        choice_NE = choice_NE.masked_fill(~keep_NE, float("-inf"))
    idx_NK = choice_NE.topk(cfg.top_k, dim=-1).indices  # (N, K)
    weight_NK = scores_NE.gather(1, idx_NK)
    if cfg.norm_topk_prob:
        weight_NK = weight_NK / (weight_NK.sum(dim=-1, keepdim=True) + 1e-20)
    return Routing(idx_NK, weight_NK * cfg.routed_scaling_factor, scores_NE)


def sequence_balance_loss(scores_BTE: Tensor, idx_BTK: Tensor, alpha: float) -> Tensor:
    """Complementary sequence-wise balance loss, DeepSeek-V3 §2.1.2 eqs. 17-20.

    L = alpha * sum_i f_i P_i per sequence, averaged over sequences; f_i = E/(K T) * (tokens of
    the sequence routed to i), P_i = mean over the sequence of s_i / sum_j s_j.
    """
    B, T, E = scores_BTE.shape
    K = idx_BTK.shape[-1]
    p_BE = (scores_BTE / scores_BTE.sum(dim=-1, keepdim=True)).mean(dim=1)  # (B, E)
    flat = idx_BTK.reshape(B, T * K)  # (B, T*K)
    count_BE = torch.zeros(B, E, device=flat.device).scatter_add_(
        1, flat, torch.ones(flat.shape, device=flat.device)
    )
    f_BE = count_BE * (E / (K * T))
    return alpha * (f_BE * p_BE).sum(dim=-1).mean()


def _autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype the expert GEMMs run in: autocast's where it is on, else the input's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class _ExpertLoop(torch.autograd.Function):
    """Per-expert SwiGLU over sorted slots with a hand-written backward (the CPU path).

    Expert e's slots are the slice ``[start_e, start_e + counts[e])`` of the sorted slot order; its
    rows are gathered from x with ``index_select`` and its output is added straight into the token
    sum with ``index_add_``, so no (S, D) gather, per-expert ``cat`` or accumulating
    ``index_put_`` backward is materialised. Gate and up projections run as one GEMM against
    ``[w1; w3]``; only their pre-activations (S, 2F) are saved. The gate weight scales the hidden
    activation (the same as scaling the output, by linearity).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x_ND: Tensor,
        tok_S: Tensor,
        gate_S: Tensor,
        counts: list[int],
        w1: Tensor,
        w3: Tensor,
        w2: Tensor,
    ) -> Tensor:
        Fh = w1.shape[1]
        w13 = torch.cat([w1, w3], dim=1)  # (E, 2F, D): gate rows, then up rows
        pre_S2F = x_ND.new_empty(tok_S.shape[0], 2 * Fh)  # gate | up pre-activations
        y_ND = torch.zeros_like(x_ND)
        for e, sl in _slices(counts):
            rows = tok_S[sl]
            pre = torch.mm(x_ND.index_select(0, rows), w13[e].t(), out=pre_S2F[sl])  # (n, 2F)
            h = F.silu(pre[:, :Fh]).mul_(pre[:, Fh:]).mul_(gate_S[sl].unsqueeze(-1))  # (n, F)
            y_ND.index_add_(0, rows, torch.mm(h, w2[e].t()))
        ctx.counts = counts  # type: ignore[attr-defined]
        ctx.save_for_backward(x_ND, tok_S, gate_S, w13, w2, pre_S2F)
        return y_ND

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gy_ND: Tensor
    ) -> tuple[Tensor | None, ...]:
        x_ND, tok_S, gate_S, w13, w2, pre_S2F = ctx.saved_tensors  # type: ignore[attr-defined]
        Fh = w2.shape[2]
        gy_ND = gy_ND.contiguous()
        gx_ND, gw13, gw2 = torch.zeros_like(x_ND), torch.zeros_like(w13), torch.zeros_like(w2)
        ggate_S = torch.zeros_like(gate_S)
        with torch.autocast(device_type=x_ND.device.type, enabled=False):
            for e, sl in _slices(ctx.counts):  # type: ignore[attr-defined]
                rows = tok_S[sl]
                a, c = pre_S2F[sl, :Fh], pre_S2F[sl, Fh:]  # (n, F) each
                g = gate_S[sl].unsqueeze(-1)  # (n, 1)
                sig = torch.sigmoid(a)
                act = a * sig  # silu(a)
                act_c = act * c  # the hidden before the gate weight
                go = gy_ND.index_select(0, rows)  # (n, D)
                torch.mm(go.t(), act_c * g, out=gw2[e])
                dh = torch.mm(go, w2[e])  # (n, F)
                ggate_S[sl] = (dh * act_c).sum(dim=-1)
                dh = dh.mul_(g)
                dpre = torch.cat([dh * c * sig * (1 + a * (1 - sig)), dh * act], dim=1)  # (n, 2F)
                torch.mm(dpre.t(), x_ND.index_select(0, rows), out=gw13[e])
                gx_ND.index_add_(0, rows, torch.mm(dpre, w13[e]))
        gw1, gw3 = gw13[:, :Fh].contiguous(), gw13[:, Fh:].contiguous()
        return gx_ND, None, ggate_S, None, gw1, gw3, gw2


def _slices(counts: list[int]) -> list[tuple[int, slice]]:
    """(expert, slice of its sorted slots) for every expert with at least one slot."""
    ends = itertools.accumulate(counts)
    pairs = enumerate(zip(counts, ends, strict=True))
    return [(e, slice(end - n, end)) for e, (n, end) in pairs if n]


def expert_ffn_loop(
    x_ND: Tensor,
    tok_S: Tensor,
    gate_S: Tensor,
    counts: list[int],
    w1: Tensor,
    w3: Tensor,
    w2: Tensor,
) -> Tensor:
    """Routed output (N, D): expert e's SwiGLU on the tokens of its sorted slots, gate-weighted.

    ``counts`` (host ints, sum S) gives each expert's slice of ``tok_S`` / ``gate_S``. Under
    autocast the inputs are cast to the autocast dtype and the loop runs with autocast off.
    """
    dtype = _autocast_dtype(x_ND)
    x, gate, a, c, b = (t.to(dtype) for t in (x_ND, gate_S, w1, w3, w2))
    with torch.autocast(device_type=x_ND.device.type, enabled=False):
        return _ExpertLoop.apply(x, tok_S, gate, counts, a, c, b)


def expert_ffn_grouped(
    x_SD: Tensor, gate_S: Tensor, counts_E: Tensor, w1: Tensor, w3: Tensor, w2: Tensor
) -> Tensor:
    """The same as :func:`expert_ffn_loop` with ``torch._grouped_mm`` (no host sync).

    Under autocast the inputs are cast to the autocast dtype by hand (grouped_mm is not on the
    autocast lists). Needs rows of 16-byte multiples (D, F divisible by 4 in fp32, 8 in bf16).
    """
    dtype = _autocast_dtype(x_SD)
    offs = counts_E.cumsum(0).to(torch.int32)  # (E,) end row of each expert's slice
    x = x_SD.to(dtype)
    gate = torch._grouped_mm(x, w1.to(dtype).transpose(-2, -1), offs=offs)  # (S, F)
    up = torch._grouped_mm(x, w3.to(dtype).transpose(-2, -1), offs=offs)  # (S, F)
    h = F.silu(gate) * up * gate_S.to(dtype).unsqueeze(-1)  # (S, F)
    return torch._grouped_mm(h, w2.to(dtype).transpose(-2, -1), offs=offs)  # (S, D)


def _grouped_ok(x: Tensor, w2: Tensor) -> bool:
    _, D, Fh = w2.shape
    row = x.element_size()
    return hasattr(torch, "_grouped_mm") and (D * row) % 16 == 0 and (Fh * row) % 16 == 0


def moe_dispatch(
    x_ND: Tensor,
    idx_NK: Tensor,
    weight_NK: Tensor,
    w1: Tensor,
    w3: Tensor,
    w2: Tensor,
    impl: ExpertImpl = "auto",
) -> tuple[Tensor, Tensor]:
    """Routed-expert output (N, D) and tokens per expert (E,) long, by sorting slots by expert.

    ``impl`` "auto" is grouped_mm on CUDA (when shapes allow) and the expert loop elsewhere.
    The K outputs of a token are summed with ``index_add`` (atomic, so not bitwise
    deterministic on CUDA).
    """
    N, D = x_ND.shape
    K, E = idx_NK.shape[1], w1.shape[0]
    flat_S = idx_NK.reshape(N * K)  # (S,) expert of slot s = n*K + k
    order_S = torch.argsort(flat_S, stable=True)  # (S,) slots grouped by expert
    counts_E = torch.zeros(E, dtype=torch.long, device=x_ND.device)
    counts_E.scatter_add_(0, flat_S, torch.ones_like(flat_S))
    tok_S = order_S // K  # (S,) token of each sorted slot
    gate_S = weight_NK.reshape(N * K)[order_S].to(x_ND.dtype)  # (S,)
    if impl == "auto":
        impl = "grouped_mm" if x_ND.is_cuda and _grouped_ok(x_ND, w2) else "loop"
    if impl == "loop":
        y_ND = expert_ffn_loop(x_ND, tok_S, gate_S, counts_E.tolist(), w1, w3, w2)
        return y_ND.to(x_ND.dtype), counts_E
    out_SD = expert_ffn_grouped(x_ND[tok_S], gate_S, counts_E, w1, w3, w2)  # (S, D)
    y_ND = out_SD.new_zeros(N, D).index_add_(0, tok_S, out_SD)
    return y_ND.to(x_ND.dtype), counts_E


def moe_forward_naive(
    x_ND: Tensor, idx_NK: Tensor, weight_NK: Tensor, w1: Tensor, w3: Tensor, w2: Tensor
) -> Tensor:
    """Reference routed-expert output: a loop over experts with boolean masks (tests, benches)."""
    y_ND = torch.zeros_like(x_ND)
    for e in range(w1.shape[0]):
        hit_NK = idx_NK == e
        rows = hit_NK.any(dim=-1).nonzero().squeeze(-1)  # tokens routed to e
        if rows.numel() == 0:
            continue
        xe = x_ND[rows]
        out = F.linear(F.silu(F.linear(xe, w1[e])) * F.linear(xe, w3[e]), w2[e])
        gate = (weight_NK * hit_NK)[rows].sum(dim=-1, keepdim=True)
        y_ND = y_ND.index_add(0, rows, (gate * out).to(y_ND.dtype))
    return y_ND


def router_bias_update(bias_E: Tensor, load_E: Tensor, rate: float) -> Tensor:
    """Aux-loss-free balancing (DeepSeek-V3 §2.1.2; Wang et al. 2024 arXiv 2408.15664).

    b_i <- b_i + u * sign(mean_j load_j - load_i): overloaded experts get less likely to be chosen.
    """
    load = load_E.to(bias_E)
    return bias_E + rate * torch.sign(load.mean() - load)


class Experts(nn.Module):
    """E routed SwiGLU experts stacked as 3-D weights, [out, in] per expert like nn.Linear.

    ``w1`` (E, F, D) gate, ``w3`` (E, F, D) up, ``w2`` (E, D, F) down.
    """

    def __init__(self, n_experts: int, d_model: int, hidden: int, init_std: float) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.impl: ExpertImpl = "auto"
        self.reset_parameters(init_std)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        """N(0, std) for every expert weight."""
        for w in (self.w1, self.w3, self.w2):
            nn.init.normal_(w, 0.0, std)

    def forward(self, x_ND: Tensor, idx_NK: Tensor, weight_NK: Tensor) -> tuple[Tensor, Tensor]:
        return moe_dispatch(x_ND, idx_NK, weight_NK, self.w1, self.w3, self.w2, self.impl)


class MoE(nn.Module):
    """MoE FFN: shared experts (always on) + top-k of E routed experts (DeepSeek-V3 eq. 12).

    ``gate`` (E, D) router weight; buffer ``e_score_bias`` (E,) float32, the aux-loss-free bias
    (persistent: checkpointed); ``experts`` the stacked routed experts; ``shared`` a SwiGLU of
    hidden F * n_shared, or None.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m, D = cfg.moe, cfg.d_model
        self.cfg = m
        self.gate = nn.Linear(D, m.n_routed_experts, bias=False)
        self.register_buffer("e_score_bias", torch.zeros(m.n_routed_experts, dtype=torch.float32))
        self.experts = Experts(m.n_routed_experts, D, m.expert_ffn_dim, cfg.init_std)
        self.shared = SwiGLU(D, m.expert_ffn_dim * m.n_shared) if m.n_shared else None

    def forward(self, x_BTD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> output (B, T, D), load (E,) float32, sequence aux loss (0-d)."""
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)  # (N, D)
        r = route(x_ND, self.gate.weight, self.e_score_bias, self.cfg)
        y_ND, counts_E = self.experts(x_ND, r.idx, r.weight)
        if self.shared is not None:
            y_ND = y_ND + self.shared(x_ND)
        if self.cfg.seq_aux_alpha > 0:
            aux = sequence_balance_loss(
                r.scores.view(B, T, -1), r.idx.view(B, T, -1), self.cfg.seq_aux_alpha
            )
        else:
            aux = torch.zeros((), device=x_BTD.device)
        return y_ND.view(B, T, D), counts_E.float(), aux

    @torch.no_grad()
    def update_bias(self, load_E: Tensor, rate: float) -> None:
        """One aux-loss-free step (size ``rate``) of ``e_score_bias`` from this step's tokens
        per expert."""
        self.e_score_bias.copy_(router_bias_update(self.e_score_bias, load_E, rate))
