"""MoE: sorted dispatch vs the naive per-expert loop, routing rules, balance loss, bias updates."""

from __future__ import annotations

import pytest
import torch

from harness.config import ModelConfig, MoEConfig
from harness.model.moe import (
    MoE,
    moe_dispatch,
    moe_forward_naive,
    route,
    router_bias_update,
    sequence_balance_loss,
)


def expert_case(
    N: int, D: int, Fh: int, E: int, K: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    w1 = torch.randn(E, Fh, D, generator=g, dtype=dtype) / D**0.5
    w3 = torch.randn(E, Fh, D, generator=g, dtype=dtype) / D**0.5
    w2 = torch.randn(E, D, Fh, generator=g, dtype=dtype) / Fh**0.5
    # skewed choice so that some experts get no token at all (E - 1 never chosen)
    logits = torch.randn(N, E, generator=g, dtype=dtype)
    logits[:, -1] = -1e9
    idx = logits.topk(K, dim=-1).indices
    weight = torch.rand(N, K, generator=g, dtype=dtype)
    return (*(t.requires_grad_() for t in (x, weight, w1, w3, w2)), idx)


def grads(
    out: torch.Tensor, inputs: tuple[torch.Tensor, ...], seed: int = 1
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, cot)


@pytest.mark.parametrize(("N", "E", "K"), [(1, 4, 1), (37, 8, 2), (64, 16, 4), (50, 6, 6)])
def test_sorted_dispatch_equals_naive_float64(N: int, E: int, K: int) -> None:
    x, weight, w1, w3, w2, idx = expert_case(N, 12, 10, E, K, torch.float64)
    params = (x, weight, w1, w3, w2)
    got, counts = moe_dispatch(x, idx, weight, w1, w3, w2, impl="loop")
    ref = moe_forward_naive(x, idx, weight, w1, w3, w2)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(got, params), grads(ref, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(counts, torch.bincount(idx.flatten(), minlength=E))


def test_expert_loop_backward_passes_gradcheck() -> None:
    """The hand-written backward of the CPU loop against finite differences (float64)."""
    x, weight, w1, w3, w2, idx = expert_case(9, 6, 5, 4, 2, torch.float64, seed=3)

    def out(*t: torch.Tensor) -> torch.Tensor:
        return moe_dispatch(t[0], idx, t[1], *t[2:], impl="loop")[0]

    assert torch.autograd.gradcheck(out, (x, weight, w1, w3, w2))


def test_expert_loop_under_cpu_autocast_runs_in_bf16() -> None:
    """Under autocast the loop computes in bf16, returns the input dtype, and grads reach all."""
    x, weight, w1, w3, w2, idx = expert_case(64, 16, 8, 8, 2, torch.float32)
    params = (x, weight, w1, w3, w2)
    ref = moe_forward_naive(x, idx, weight, w1, w3, w2)
    with torch.autocast("cpu", torch.bfloat16):
        got, _ = moe_dispatch(x, idx, weight, w1, w3, w2, impl="loop")
    assert got.dtype == torch.float32
    assert not torch.equal(got, ref)  # bf16 rounding shows
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05)
    for g, p in zip(grads(got, params), params, strict=True):
        assert g.dtype == p.dtype and g.shape == p.shape and g.is_contiguous()
        assert g.abs().sum() > 0


def test_grouped_mm_dispatch_equals_naive() -> None:
    """The CUDA path (torch._grouped_mm) also runs on CPU in float32; rows are 16-byte aligned."""
    x, weight, w1, w3, w2, idx = expert_case(48, 16, 8, 8, 2, torch.float32)
    params = (x, weight, w1, w3, w2)
    got, _ = moe_dispatch(x, idx, weight, w1, w3, w2, impl="grouped_mm")
    ref = moe_forward_naive(x, idx, weight, w1, w3, w2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(got, params), grads(ref, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def route_case(cfg: MoEConfig, N: int = 64, D: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    gate = torch.randn(cfg.n_routed_experts, D, generator=g) / D**0.5
    bias = 0.5 * torch.randn(cfg.n_routed_experts, generator=g)
    return x, gate, bias, route(x, gate, bias, cfg)


def test_flat_routing_bias_selects_but_does_not_weight() -> None:
    cfg = MoEConfig(n_routed_experts=8, top_k=3, routed_scaling_factor=2.0)
    x, gate, bias, r = route_case(cfg)
    scores = torch.sigmoid(x @ gate.T)
    expected_idx = (scores + bias).topk(3, dim=-1).indices
    assert torch.equal(r.idx.sort(-1).values, expected_idx.sort(-1).values)
    w = scores.gather(1, r.idx)
    torch.testing.assert_close(r.weight, 2.0 * w / w.sum(-1, keepdim=True))
    assert r.weight.dtype == torch.float32


def test_group_limited_routing_matches_brute_force() -> None:
    cfg = MoEConfig(n_routed_experts=12, top_k=3, n_groups=4, topk_groups=2)
    x, gate, bias, r = route_case(cfg, N=40)
    biased = torch.sigmoid(x @ gate.T) + bias
    for n in range(x.shape[0]):
        groups = biased[n].view(4, 3)
        group_score = groups.topk(2, dim=-1).values.sum(-1)
        kept = set(group_score.topk(2).indices.tolist())
        allowed = [e for e in range(12) if e // 3 in kept]
        best = sorted(allowed, key=lambda e: -biased[n, e].item())[:3]
        assert sorted(r.idx[n].tolist()) == sorted(best)


def test_softmax_scores_and_unnormalised_weights() -> None:
    cfg = MoEConfig(n_routed_experts=8, top_k=2, score_func="softmax", norm_topk_prob=False)
    x, _, _, r = route_case(cfg)
    torch.testing.assert_close(r.scores.sum(-1), torch.ones(x.shape[0]))
    torch.testing.assert_close(r.weight, r.scores.gather(1, r.idx))


def test_router_runs_in_float32_under_autocast() -> None:
    cfg = MoEConfig(n_routed_experts=8, top_k=2)
    g = torch.Generator().manual_seed(0)
    x, gate = torch.randn(16, 8, generator=g), torch.randn(8, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = route(x, gate, torch.zeros(8), cfg)
    assert r.scores.dtype == torch.float32
    torch.testing.assert_close(r.scores, torch.sigmoid(x @ gate.T))


def test_sequence_balance_loss_formula() -> None:
    """DeepSeek-V3 eqs. 17-20 by loops; perfectly balanced routing gives exactly alpha."""
    g = torch.Generator().manual_seed(0)
    B, T, E, K, alpha = 2, 6, 4, 2, 0.01
    scores = torch.rand(B, T, E, generator=g)
    idx = torch.rand(B, T, E, generator=g).topk(K, dim=-1).indices
    expected = 0.0
    for b in range(B):
        for i in range(E):
            f = E / (K * T) * sum(int(i in idx[b, t].tolist()) for t in range(T))
            p = sum((scores[b, t, i] / scores[b, t].sum()).item() for t in range(T)) / T
            expected += alpha * f * p / B
    torch.testing.assert_close(sequence_balance_loss(scores, idx, alpha).item(), expected)
    uniform = torch.ones(1, 4, 4)
    balanced = torch.tensor([[[0, 1], [2, 3], [0, 1], [2, 3]]])
    torch.testing.assert_close(sequence_balance_loss(uniform, balanced, alpha).item(), alpha)


def test_bias_update_sign_rule() -> None:
    load = torch.tensor([10.0, 2.0, 4.0, 4.0])  # mean 5
    new = router_bias_update(torch.zeros(4), load, 1e-3)
    torch.testing.assert_close(new, torch.tensor([-1e-3, 1e-3, 1e-3, 1e-3]))


def test_bias_updates_balance_a_skewed_router() -> None:
    """Repeated aux-loss-free steps spread the load of a router that prefers one expert."""
    cfg = ModelConfig(d_model=16, moe={"n_routed_experts": 8, "top_k": 2, "bias_update_rate": 0.05})
    torch.manual_seed(0)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
        moe.gate.weight[0] += 1.0  # expert 0 overloaded
    x = torch.randn(4, 64, 16)
    with torch.no_grad():
        _, load0, _ = moe(x)
        for _ in range(30):
            moe.update_bias(moe(x)[1], cfg.moe.bias_rate(0))
        _, load1, _ = moe(x)
    assert load0.sum() == load1.sum() == 4 * 64 * 2
    assert moe.e_score_bias[0] < 0
    assert load1.max() < load0.max()
    assert load1.std() < 0.6 * load0.std()


def test_moe_module_outputs() -> None:
    cfg = ModelConfig(d_model=16, moe={"n_routed_experts": 8, "top_k": 2, "seq_aux_alpha": 1e-2})
    torch.manual_seed(0)
    moe = MoE(cfg)
    x = torch.randn(3, 5, 16, requires_grad=True)
    y, load, aux = moe(x)
    assert y.shape == x.shape and load.shape == (8,) and aux.shape == ()
    assert load.sum() == 3 * 5 * 2 and not load.requires_grad
    (y.square().sum() + aux).backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert "e_score_bias" in moe.state_dict()
