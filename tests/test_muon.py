"""Muon: parity with torch.optim.Muon, batched experts = per-expert loop, NS singular values."""

from __future__ import annotations

import pytest
import torch

from harness.optim import Muon, muon_update, newton_schulz
from harness.optim.muon import NS_COEFFICIENTS, update_scale_factor

SHAPES_2D = [(32, 16), (16, 48), (24, 24), (32, 16)]  # tall, wide, square, and a repeat (bucket)


def _grads(shapes: list[tuple[int, ...]], steps: int, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]):
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("scale", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon_on_2d(scale: str, nesterov: bool) -> None:
    """Same settings, float32 params, NS in bfloat16 as torch does: identical after 5 steps."""
    torch.manual_seed(0)
    init = [torch.randn(s) * 0.1 for s in SHAPES_2D]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone().requires_grad_() for p in init]
    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95, "nesterov": nesterov, "ns_steps": 5}
    opt = Muon(ours, update_scale=scale, ns_dtype=torch.bfloat16, **kw)
    ref_opt = torch.optim.Muon(ref, adjust_lr_fn=scale, **kw)
    grads = _grads(SHAPES_2D, 5, seed=1)
    _run(opt, ours, grads)
    _run(ref_opt, ref, grads)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(
            opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"], rtol=0, atol=0
        )


@pytest.mark.parametrize("scale", ["original", "match_rms_adamw"])
def test_float32_ns_close_to_torch_muon(scale: str) -> None:
    """The CPU default (float32 NS) differs from torch's bfloat16 NS only by bf16 rounding."""
    torch.manual_seed(0)
    init = [torch.randn(s) * 0.1 for s in SHAPES_2D]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone().requires_grad_() for p in init]
    opt = Muon(ours, lr=0.02, update_scale=scale)
    ref_opt = torch.optim.Muon(ref, lr=0.02, adjust_lr_fn=scale)
    grads = _grads(SHAPES_2D, 5, seed=2)
    _run(opt, ours, grads)
    _run(ref_opt, ref, grads)
    for a, b, p0 in zip(ours, ref, init, strict=True):
        moved = (b - p0).abs().max()
        assert (a - b).abs().max() < 0.05 * moved


def test_expert_stack_equals_loop_over_experts() -> None:
    """A [E, n, m] stack (one batched NS call) = E separate 2-D Muons, one per expert."""
    E, n, m = 6, 20, 12
    torch.manual_seed(0)
    stack = (torch.randn(E, n, m) * 0.1).requires_grad_()
    singles = [stack[e].detach().clone().requires_grad_() for e in range(E)]
    opt = Muon([stack], lr=0.01, weight_decay=0.1)
    loop_opts = [Muon([p], lr=0.01, weight_decay=0.1) for p in singles]
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        g = torch.randn(E, n, m, generator=gen)
        stack.grad = g.clone()
        opt.step()
        for e, (p, o) in enumerate(zip(singles, loop_opts, strict=True)):
            p.grad = g[e].clone()
            o.step()
    torch.testing.assert_close(stack.detach(), torch.stack(singles).detach(), rtol=1e-5, atol=1e-6)


def test_ns_batched_equals_per_matrix_and_float64_reference() -> None:
    torch.manual_seed(0)
    G = torch.randn(3, 4, 40, 24)
    out = newton_schulz(G, 5)
    loop = torch.stack([torch.stack([newton_schulz(g, 5) for g in row]) for row in G])
    torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-6)
    ref = newton_schulz(G.double(), 5)
    assert ref.dtype == torch.float64
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-5)
    assert newton_schulz(G, 5, dtype=torch.bfloat16).dtype == torch.float32


def _with_singular_values(s: torch.Tensor, n: int, m: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, len(s), generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(m, len(s), generator=gen, dtype=torch.float64))
    return (U * s) @ V.T, U, V


@pytest.mark.parametrize(("n", "m"), [(64, 32), (32, 64), (48, 48)])
@pytest.mark.parametrize("condition", [1e1, 1e3, 1e7])
def test_ns_singular_values(n: int, m: int, condition: float) -> None:
    """NS acts on each singular value alone: U diag(f(s / ||G||_F)) V^T.

    Directions with s / ||G||_F >= 2e-3 land in [0.6, 1.3] after 5 steps (the quintic's band is
    about [0.68, 1.21]); smaller ones, a near-null space of an ill-conditioned input, are only
    amplified (about 3.44x a step) and never exceed 1.3.
    """
    k = min(n, m)
    s = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), k, dtype=torch.float64)
    G, U, V = _with_singular_values(s, n, m, seed=int(condition) % 97)
    O = newton_schulz(G.float(), 5).double()
    f = torch.diagonal(U.T @ O @ V)  # output singular value of each input direction
    rel = s / s.norm()
    big = rel >= 2e-3
    assert big.any()
    assert f[big].min() >= 0.6 and f[big].max() <= 1.3, (f[big].min(), f[big].max())
    assert f.abs().max() <= 1.3
    sv = torch.linalg.svdvals(O)
    assert sv.max() <= 1.3


def test_ns_singular_values_random() -> None:
    """Gaussian inputs: same band; a square one has a few tiny singular values, checked as above."""
    torch.manual_seed(0)
    for shape in [(256, 64), (64, 256), (128, 128)]:
        G = torch.randn(shape, dtype=torch.float64)
        U, s, Vh = torch.linalg.svd(G, full_matrices=False)
        f = torch.diagonal(U.T @ newton_schulz(G.float(), 5).double() @ Vh.T)
        big = s / s.norm() >= 2e-3
        assert big.sum() >= min(shape) - 2
        assert f[big].min() >= 0.6 and f.abs().max() <= 1.3, (shape, f[big].min(), f.max())


def test_update_scale_factor() -> None:
    assert update_scale_factor((64, 16), "original") == pytest.approx(2.0)
    assert update_scale_factor((16, 64), "original") == 1.0
    assert update_scale_factor((8, 16, 64), "match_rms_adamw") == pytest.approx(1.6)
    with pytest.raises(ValueError, match="update_scale"):
        update_scale_factor((4, 4), "bogus")  # type: ignore[arg-type]


def test_muon_update_is_ema_with_nesterov() -> None:
    g = torch.randn(8, 4)
    buf = torch.ones(8, 4)
    (out,) = muon_update([g], [buf], momentum=0.9, nesterov=True)
    expected_buf = 0.9 * torch.ones(8, 4) + 0.1 * g
    torch.testing.assert_close(buf, expected_buf)
    torch.testing.assert_close(out, newton_schulz(0.1 * g + 0.9 * expected_buf, 5, NS_COEFFICIENTS))


def test_update_rms_telemetry() -> None:
    torch.manual_seed(0)
    params = [torch.randn(64, 32, requires_grad=True), torch.randn(4, 16, 48, requires_grad=True)]
    opt = Muon(params, lr=0.01, update_scale="match_rms_adamw")
    assert opt.last_update_rms is None and opt.last_step_rms is None
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    rms = opt.last_update_rms
    assert rms is not None and 0.14 < rms < 0.26  # Moonlight: about 0.2, NS leaves s in 0.7-1.2
    assert opt.last_step_rms == pytest.approx(0.01 * rms)


def test_rejects_vectors() -> None:
    with pytest.raises(ValueError, match="ndim >= 2"):
        Muon([torch.zeros(4, requires_grad=True)])
