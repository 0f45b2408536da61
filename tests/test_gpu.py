"""The CUDA path against its CPU-tested references; every test here is skipped without CUDA.

``make gpu-check`` runs them on a GPU box. Each compares the fast path a GPU profile uses
(grouped_mm experts, batched bf16 Newton-Schulz, QK-Clip under bf16 autocast, torch.compile)
with the reference the CPU tests pin down, within bf16 tolerance: bf16 keeps 8 mantissa bits, a
relative rounding of 2^-8 ~ 0.4% per operation, so a few layers of products agree to ~2-3%.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.config import AttentionConfig, ModelConfig, MoEConfig
from harness.model.moe import moe_dispatch, moe_forward_naive
from harness.model.transformer import Transformer
from harness.optim import Muon, qk_clip_

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
BF16_RTOL = 3e-2  # a few bf16 roundings (2^-8 each) compounded: see the module docstring


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64: a tolerance on the whole tensor, not on each element."""
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))


def _expert_case(dev: torch.device, N: int = 512, D: int = 256, Fh: int = 128, E: int = 16,
                 K: int = 4) -> tuple[torch.Tensor, ...]:
    """Float32 tokens x (N, D), routing (N, K), expert weights (E, Fh, D) x2 and (E, D, Fh)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    w1 = torch.randn(E, Fh, D, generator=g) / D**0.5
    w3 = torch.randn(E, Fh, D, generator=g) / D**0.5
    w2 = torch.randn(E, D, Fh, generator=g) / Fh**0.5
    logits = torch.randn(N, E, generator=g)
    logits[:, -1] = -1e9  # one expert gets no token: an empty group in grouped_mm
    idx = logits.topk(K, dim=-1).indices
    weight = torch.rand(N, K, generator=g)
    leaves = tuple(t.to(dev).requires_grad_() for t in (x, weight, w1, w3, w2))
    return (*leaves, idx.to(dev))


def _forward_backward(impl: str, case: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Output (N, D) and the gradients of x, weight, w1, w3, w2 of one dispatch under bf16."""
    x, weight, w1, w3, w2, idx = case
    with torch.autocast("cuda", torch.bfloat16):
        out, _ = moe_dispatch(x, idx, weight, w1, w3, w2, impl=impl)  # type: ignore[arg-type]
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    return [out.detach(), *torch.autograd.grad(out.float(), (x, weight, w1, w3, w2), cot)]


def test_grouped_mm_experts_equal_the_loop_in_bf16() -> None:
    dev = torch.device("cuda")
    case = _expert_case(dev)
    grouped, loop = _forward_backward("grouped_mm", case), _forward_backward("loop", case)
    x, weight, w1, w3, w2, idx = case
    ref = moe_forward_naive(x.double(), idx, weight.double(), w1.double(), w3.double(),
                            w2.double())
    assert _rel_err(grouped[0], ref) < BF16_RTOL
    for name, a, b in zip(("out", "dx", "dweight", "dw1", "dw3", "dw2"), grouped, loop,
                          strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert _rel_err(a, b) < BF16_RTOL, (name, _rel_err(a, b))
    assert grouped[3][-1].abs().sum() == 0  # the expert no token chose gets no gradient


def test_batched_bf16_newton_schulz_equals_torch_muon_per_matrix() -> None:
    """Our Muon batches same-shape matrices into one bf16 Newton-Schulz; torch.optim.Muon runs
    one matrix at a time (also bf16 on CUDA). After 5 steps the weights agree to bf16 rounding
    of the updates."""
    dev = torch.device("cuda")
    shapes = [(256, 128)] * 4 + [(128, 384), (192, 192)]  # a bucket of 4, a wide and a square
    g = torch.Generator().manual_seed(0)
    init = [(0.02 * torch.randn(s, generator=g)).to(dev) for s in shapes]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone().requires_grad_() for p in init]
    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True, "ns_steps": 5}
    opt = Muon(ours, update_scale="match_rms_adamw", **kw)  # ns_dtype None: bf16 on CUDA
    ref_opt = torch.optim.Muon(ref, adjust_lr_fn="match_rms_adamw", **kw)
    for _ in range(5):
        grads = [torch.randn(s, generator=g).to(dev) for s in shapes]
        for params, o in ((ours, opt), (ref, ref_opt)):
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            o.step()
    for a, b, p0 in zip(ours, ref, init, strict=True):
        moved = (b - p0).detach()
        assert moved.norm() > 0
        assert _rel_err(a.detach() - p0, moved) < BF16_RTOL


def _model(dev: torch.device) -> Transformer:
    cfg = ModelConfig(
        d_model=128, n_layers=3, first_k_dense=1, dense_ffn_dim=256, vocab_size=512,
        max_seq_len=256,
        attention=AttentionConfig(kind="mla", n_heads=8, kv_lora_rank=64, qk_nope_head_dim=16,
                                  qk_rope_head_dim=8, v_head_dim=16),
        moe=MoEConfig(n_routed_experts=16, top_k=4, n_shared=1, expert_ffn_dim=64),
    )
    torch.manual_seed(0)
    return Transformer(cfg).to(dev)


def _tokens(dev: torch.device, batch: int = 4, seq: int = 256) -> torch.Tensor:
    return torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(2)).to(dev)


def _split_tau(S: torch.Tensor) -> float:
    """A tau in the widest gap between neighbouring max logits around their median, so that
    bf16 rounding of a logit cannot move it across tau by chance."""
    s = S.flatten().sort().values
    mid = len(s) // 2
    lo, hi = mid // 2, mid + mid // 2
    gaps = s[lo + 1 : hi + 1] - s[lo:hi]
    i = lo + int(gaps.argmax())
    return float((s[i] + s[i + 1]) / 2)


def test_qk_clip_under_autocast_clips_the_same_heads_as_fp32() -> None:
    dev = torch.device("cuda")
    model = _model(dev)
    with torch.no_grad():  # spread the heads' logits: query rows scaled 1x..12x
        for attn in model.attention_modules():
            w = attn.q_proj.weight
            w.mul_(torch.linspace(1.0, 12.0, w.shape[0], device=dev)[:, None])
        tokens = _tokens(dev)
        S32 = model(tokens)[1].max_logits
        with torch.autocast("cuda", torch.bfloat16):
            S16 = model(tokens)[1].max_logits
    assert S16.dtype == torch.float32 and _rel_err(S16, S32) < BF16_RTOL
    tau = _split_tau(S32)
    clip = S32.gt(tau)
    assert clip.any() and (~clip).any()
    assert torch.equal(S16.gt(tau), clip)
    fp32, bf16 = _model(dev), _model(dev)
    for m in (fp32, bf16):
        m.load_state_dict(model.state_dict())
    counts32, counts16 = qk_clip_(fp32, tau, S32), qk_clip_(bf16, tau, S16)
    assert torch.equal(counts32, counts16) and counts32.sum() == clip.sum()
    for (name, a), b in zip(fp32.named_parameters(), bf16.parameters(), strict=True):
        assert _rel_err(b, a) < BF16_RTOL, name


def test_compiled_model_gives_the_eager_loss() -> None:
    dev = torch.device("cuda")
    model = _model(dev)
    tokens = _tokens(dev)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def loss(forward: torch.nn.Module) -> torch.Tensor:
        with torch.autocast("cuda", torch.bfloat16):
            logits, _ = forward(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    eager = loss(model)
    compiled = loss(torch.compile(model))  # type: ignore[arg-type]
    # bf16 under both: the fused kernels round differently, so equal to ~1e-3, not bit for bit
    assert torch.isfinite(eager) and abs(float(compiled) - float(eager)) < 1e-2 * float(eager)
