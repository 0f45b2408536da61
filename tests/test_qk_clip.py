"""QK-Clip: clipped heads' logits drop to tau, nothing else moves; MuonClip caps training."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.config import AttentionConfig, ModelConfig, MoEConfig, OptimConfig
from harness.model.attention import causal_max_logits
from harness.model.transformer import Transformer
from harness.optim import build_optimizer, qk_clip_

ATTENTIONS = {
    "mla_q_lora_0": AttentionConfig(
        kind="mla", n_heads=4, q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8,
    ),
    "mla_q_lora_12": AttentionConfig(
        kind="mla", n_heads=4, q_lora_rank=12, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8,
    ),
    "mha": AttentionConfig(kind="mha", n_heads=4, head_dim=8),
}  # fmt: skip


def _cfg(attention: AttentionConfig, init_std: float = 0.02) -> ModelConfig:
    return ModelConfig(
        d_model=32,
        n_layers=2,
        init_std=init_std,
        first_k_dense=1,
        dense_ffn_dim=48,
        vocab_size=64,
        max_seq_len=64,
        attention=attention,
        moe=MoEConfig(n_routed_experts=4, top_k=2, n_shared=1, expert_ffn_dim=16),
    )


def _layer_max_logits(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-head max logit of one attention module on its input x (B, T, D) -> (H,)."""
    q, k, _ = attn.qkv(x)
    return causal_max_logits(q, k, attn.softmax_scale)


def _qk_rows(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(query weight, key-producing weight, rows per head of the key weight)."""
    if attn.kind == "mha":
        return attn.q_proj.weight, attn.k_proj.weight, attn.head_dim
    q = attn.q_proj.weight if attn.q_lora_rank == 0 else attn.q_b_proj.weight
    return q, attn.kv_b_proj.weight, attn.qk_nope_head_dim + attn.v_head_dim


@pytest.mark.parametrize("arch", sorted(ATTENTIONS))
def test_clip_brings_clipped_heads_to_tau_and_leaves_the_rest(arch: str) -> None:
    torch.manual_seed(0)
    model = Transformer(_cfg(ATTENTIONS[arch]))
    attns = list(model.attention_modules())
    with torch.no_grad():  # large query weights: logits of order 10-100
        for attn in attns:
            _qk_rows(attn)[0].mul_(torch.linspace(1.0, 12.0, _qk_rows(attn)[0].shape[0])[:, None])
    inputs: list[torch.Tensor] = []
    hooks = [a.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for a in attns]
    tokens = torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, tel = model(tokens)
    for h in hooks:
        h.remove()
    S = tel.max_logits
    assert S.shape == (len(attns), attns[0].n_heads) and S.dtype == torch.float32
    tau = float(S.flatten().median())
    clip = S.gt(tau)
    assert clip.any() and (~clip).any()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    counts = qk_clip_(model, tau, S)

    assert counts.tolist() == clip.sum(1).tolist()
    params = dict(model.named_parameters())
    for layer, (attn, x) in enumerate(zip(attns, inputs, strict=True)):
        with torch.no_grad():
            after = _layer_max_logits(attn, x)
        c = clip[layer]
        assert (after[c] <= tau * (1 + 1e-4)).all() and (after[c] >= tau * (1 - 1e-4)).all()
        torch.testing.assert_close(after[~c], S[layer][~c], rtol=1e-6, atol=0)
        q_w, k_w, k_rows = _qk_rows(attn)
        q_name = next(n for n, p in params.items() if p is q_w)
        k_name = next(n for n, p in params.items() if p is k_w)
        q_rows = q_w.shape[0] // attn.n_heads
        for h in range(attn.n_heads):
            qs, ks = slice(h * q_rows, (h + 1) * q_rows), slice(h * k_rows, (h + 1) * k_rows)
            if not c[h]:
                assert torch.equal(q_w[qs], before[q_name][qs])
                assert torch.equal(k_w[ks], before[k_name][ks])
                continue
            gamma = tau / S[layer, h]
            if attn.kind == "mha":
                torch.testing.assert_close(q_w[qs], before[q_name][qs] * gamma.sqrt())
                torch.testing.assert_close(k_w[ks], before[k_name][ks] * gamma.sqrt())
            else:
                nope = attn.qk_nope_head_dim
                q_old, q_new = before[q_name][qs], q_w[qs]
                torch.testing.assert_close(q_new[:nope], q_old[:nope] * gamma.sqrt())  # q^C
                torch.testing.assert_close(q_new[nope:], q_old[nope:] * gamma)  # q^R
                k_old, k_new = before[k_name][ks], k_w[ks]
                torch.testing.assert_close(k_new[:nope], k_old[:nope] * gamma.sqrt())  # k^C
                assert torch.equal(k_new[nope:], k_old[nope:])  # values
    for name, p in params.items():
        if not name.endswith(
            ("q_proj.weight", "q_b_proj.weight", "k_proj.weight", "kv_b_proj.weight")
        ):
            assert torch.equal(p, before[name]), name  # incl. kv_a_proj (k^R), q_a_proj, v_proj


def test_nothing_clipped_below_tau() -> None:
    model = Transformer(_cfg(ATTENTIONS["mla_q_lora_0"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    counts = qk_clip_(model, 100.0, torch.full((2, 4), 5.0))
    assert counts.tolist() == [0, 0]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="n_layers"):
        qk_clip_(model, 100.0, torch.zeros(3, 4))


def _train_max_logits(tau: float | None, steps: int = 150) -> tuple[list[float], list[float]]:
    """Muon, large init and lr, on fixed random tokens; returns per-step max logit and loss.

    The max logit is the one the forward of each step measures, i.e. after the previous step's
    optimizer update and clip.
    """
    torch.manual_seed(0)
    model = Transformer(_cfg(ATTENTIONS["mla_q_lora_0"], init_std=0.2))
    optim = OptimConfig(name="muon", lr=0.01, adamw_lr=0.005, weight_decay=0.0, qk_clip_tau=tau)
    opt = build_optimizer(model, optim)
    tokens = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    max_logits, losses = [], []
    for _ in range(steps):
        logits, tel = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        (loss + tel.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if tau is not None:
            qk_clip_(model, tau, tel.max_logits)
        max_logits.append(float(tel.max_logits.max()))
        losses.append(loss.item())
    return max_logits, losses


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls: with other processes on the cores, extra threads only add waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_muonclip_caps_max_logit_while_muon_does_not() -> None:
    """K2 Algorithm 1 clips after the step, from the step's pre-update logits, so the next forward
    can overshoot tau by one step's growth; at this lr that is a few percent (<= 1.1 tau)."""
    tau = 10.0
    plain, plain_loss = _train_max_logits(None)
    clipped, clip_loss = _train_max_logits(tau)
    assert max(plain) > 1.1 * tau
    first = next(i for i, s in enumerate(clipped) if s > tau)  # forward before any clip
    assert max(clipped[first + 1 :]) <= 1.1 * tau, max(clipped[first + 1 :])
    assert clipped[-1] < plain[-1]
    for losses in (plain_loss, clip_loss):
        assert sum(losses[-10:]) / 10 < 0.1 * losses[0]
