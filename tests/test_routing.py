"""Routing health (harness.routing), the router's own settings, and Muon's idle experts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.config import MoEConfig, TrialConfig
from harness.optim import Muon
from harness.routing import BALANCED, COLLAPSED, PREFIX, routing_health
from harness.tracking import MemoryTracker
from harness.train import run_trial


def _rows(imbalances: list[float], dead_last: int = 0) -> list[tuple[int, dict[str, float]]]:
    rows = [(8 * (i + 1), {"moe/imbalance": v, "moe/imbalance_peak": 2 * v,
                           "moe/dead_experts": 0.0, "moe/bias_range/L1": 0.1})
            for i, v in enumerate(imbalances)]
    rows[-1][1]["moe/dead_experts"] = float(dead_last)
    return rows


def test_health_rule() -> None:
    healthy = routing_health(_rows([9.0, 3.0, 1.5, 1.4, 1.3, 1.2, 1.3, 1.2]), 0.64)
    assert healthy is not None and not healthy.collapsed
    assert healthy.balanced_step == 24 and healthy.peak_imbalance == 18.0
    assert healthy.bias_saturation == pytest.approx(0.1 / (2 * 0.64))
    m = healthy.metrics()
    assert m[f"{PREFIX}collapsed"] == 0.0 and m[f"{PREFIX}balanced_step"] == 24.0
    dead = routing_health(_rows([1.2] * 8, dead_last=3), 0.64)
    never = routing_health(_rows([2.5] * 8), 0.64)
    ended = routing_health(_rows([1.5] * 5 + [COLLAPSED + 1] * 3), 0.64)
    for health in (dead, never, ended):
        assert health is not None and health.collapsed
    assert never is not None and f"{PREFIX}balanced_step" not in never.metrics()
    assert routing_health([(8, {"train/loss": 1.0})], 0.64) is None  # a dense model


def test_bias_rate_is_a_schedule_of_the_step_alone() -> None:
    auto = MoEConfig()
    assert auto.bias_update_rate is None
    assert auto.bias_rate(0) == auto.bias_rate_start
    assert auto.bias_rate(auto.bias_rate_decay_steps) == pytest.approx(auto.bias_rate_start / 2)
    assert auto.bias_rate(10**7) == 1e-3  # long runs keep DeepSeek-V3's u
    assert auto.bias_travel(3) == pytest.approx(sum(auto.bias_rate(t) for t in range(3)))
    assert MoEConfig(bias_update_rate=0.0).bias_rate(500) == 0.0
    fixed = MoEConfig(bias_update_rate=2e-3)
    assert fixed.bias_rate(500) == 2e-3 and fixed.bias_travel(10) == pytest.approx(2e-2)


ROUTED = {
    "model": {"d_model": 32, "n_layers": 3, "first_k_dense": 1, "dense_ffn_dim": 64,
              "attention": {"n_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                            "qk_rope_head_dim": 4, "v_head_dim": 8},
              "moe": {"n_routed_experts": 16, "top_k": 2, "expert_ffn_dim": 16}},
    "optim": {"name": "muon", "lr": 0.02},
    "data": {"corpus": "synthetic", "synthetic_vocab": 64, "synthetic_tokens": 400_000,
             "val_tokens": 2048},
    "train": {"tokens": 300 * 1024, "batch_tokens": 1024, "seq_len": 64, "log_every": 10,
              "eval_every": 10**9, "checkpoint_every": 10**9, "threads": 1},
}


def _routed(moe: dict[str, object], optim: dict[str, object]) -> TrialConfig:
    raw = {**ROUTED, "model": {**ROUTED["model"], "moe": {**ROUTED["model"]["moe"], **moe}},
           "optim": {**ROUTED["optim"], **optim}}
    return TrialConfig.model_validate(raw)


def _final(tracker: MemoryTracker, key: str) -> float:
    return tracker.history(key)[-1][1]


def test_default_routing_stays_balanced_and_a_forced_collapse_is_flagged(tmp_path: Path) -> None:
    """300 steps of a 16-expert MoE: the defaults end with every expert in use and the load
    bounded; the bias off and a fast router (the old failure) collapse, and the flag says so."""
    healthy = MemoryTracker()
    run_trial(_routed({}, {}), healthy, cache_dir=tmp_path)
    assert _final(healthy, f"{PREFIX}dead_experts") == 0
    assert _final(healthy, f"{PREFIX}last_quarter_imbalance") < COLLAPSED
    assert _final(healthy, f"{PREFIX}collapsed") == 0
    assert healthy.history(f"{PREFIX}balanced_step")
    forced = MemoryTracker()
    run_trial(_routed({"bias_update_rate": 0.0}, {"router_lr": 0.05}), forced, cache_dir=tmp_path)
    assert _final(forced, f"{PREFIX}collapsed") == 1
    assert max(v for _, v in forced.history("moe/imbalance_peak")) > 2 * BALANCED


def _idle_step(skip_idle: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Muon step on an expert stack whose expert 1 got no gradient, after one live step."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 8, 4))
    opt = Muon([w], lr=0.02, weight_decay=0.1, skip_idle=skip_idle)
    w.grad = torch.randn(3, 8, 4)
    opt.step()
    before, buf = w.detach().clone(), opt.state[w]["momentum_buffer"].clone()
    w.grad = torch.randn(3, 8, 4)
    w.grad[1] = 0.0
    opt.step()
    return before, buf, w.detach()


def test_muon_skip_idle_leaves_an_expert_without_tokens_alone() -> None:
    before, _, after = _idle_step(skip_idle=True)
    assert torch.equal(after[1], before[1])
    assert not torch.equal(after[0], before[0]) and not torch.equal(after[2], before[2])
    _, _, drifted = _idle_step(skip_idle=False)
    moved = (drifted[1] - before[1]).norm() / (drifted[0] - before[0]).norm()
    assert moved > 0.5  # stale momentum, normalised by Newton-Schulz: a full-size step


def test_muon_skip_idle_keeps_the_idle_momentum() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(2, 4, 4))
    opt = Muon([w], lr=0.02, skip_idle=True)
    w.grad = torch.randn(2, 4, 4)
    opt.step()
    kept = opt.state[w]["momentum_buffer"].clone()
    w.grad = torch.zeros(2, 4, 4)
    w.grad[0] = 1.0
    opt.step()
    buf = opt.state[w]["momentum_buffer"]
    assert torch.equal(buf[1], kept[1]) and not torch.equal(buf[0], kept[0])
