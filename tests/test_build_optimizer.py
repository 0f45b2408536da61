"""Param groups of build_optimizer and checkpoint round trips of the combined optimizer."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from harness.config import AttentionConfig, ModelConfig, MoEConfig, OptimConfig
from harness.config.trial import ROUTER_LR
from harness.model.transformer import Transformer
from harness.optim import CombinedOptimizer, Muon, build_optimizer, describe_groups


def _cfg(tie: bool = False, q_lora_rank: int = 0) -> ModelConfig:
    return ModelConfig(
        d_model=32,
        n_layers=3,
        first_k_dense=1,
        dense_ffn_dim=48,
        vocab_size=64,
        max_seq_len=32,
        tie_embeddings=tie,
        attention=AttentionConfig(
            kind="mla",
            n_heads=2,
            q_lora_rank=q_lora_rank,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=4,
            v_head_dim=8,
        ),
        moe=MoEConfig(n_routed_experts=4, top_k=2, n_shared=1, expert_ffn_dim=16),
    )


def _groups_by_param(opt: torch.optim.Optimizer) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for g in opt.param_groups:
        for p in g["params"]:
            out.setdefault(id(p), []).append(g["name"])
    return out


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("q_lora_rank", [0, 12])
def test_muon_groups_partition_the_model(tie: bool, q_lora_rank: int) -> None:
    torch.manual_seed(0)
    model = Transformer(_cfg(tie, q_lora_rank))
    optim = OptimConfig(name="muon", lr=0.02, adamw_lr=3e-3, weight_decay=0.1)
    opt = build_optimizer(model, optim)
    assert isinstance(opt, CombinedOptimizer)
    where = _groups_by_param(opt)
    named = dict(model.named_parameters())  # tied weights appear once
    assert len(where) == len(named)
    assert all(len(groups) == 1 for groups in where.values())
    kind = {name: where[id(p)][0] for name, p in named.items()}
    adamw = {n for n, g in kind.items() if g != "muon"}
    assert "embed.weight" in adamw and "norm.weight" in adamw
    assert tie or "lm_head.weight" in adamw
    for name, p in named.items():
        is_router = name.endswith("ffn.gate.weight")
        if p.ndim < 2:
            assert kind[name] == "adamw_no_decay", name
        elif is_router:
            assert kind[name] == "router", name
        elif name.startswith("blocks."):
            assert kind[name] == "muon", name
        else:
            assert kind[name] == "adamw_decay", name
    assert any(n.endswith("experts.w1") for n, g in kind.items() if g == "muon")
    assert any(n.endswith("ffn.gate.weight") for n in adamw)
    for g in opt.param_groups:
        assert g["kind"] == ("muon" if g["name"] == "muon" else "adamw")
        expected = {"muon": 0.02, "router": ROUTER_LR}.get(g["name"], 3e-3)
        assert g["base_lr"] == expected
        assert g["lr"] == g["base_lr"]
    desc = describe_groups(opt)
    assert set(desc) == {"muon", "adamw_decay", "router", "adamw_no_decay"}
    assert sum(d["n_elements"] for d in desc.values()) == sum(p.numel() for p in named.values())
    assert sum(d["n_tensors"] for d in desc.values()) == len(named)


def test_adamw_run_is_all_adamw() -> None:
    model = Transformer(_cfg())
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["kind"] for g in opt.param_groups} == {"adamw"}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    for g in opt.param_groups:
        assert g["weight_decay"] == (0.0 if g["name"] == "adamw_no_decay" else 0.1)
        assert all((p.ndim < 2) == (g["name"] == "adamw_no_decay") for p in g["params"])


def _train(
    model: Transformer, opt: torch.optim.Optimizer, tokens: torch.Tensor, steps: int
) -> None:
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * (1.0 - 0.05 * i)
        logits, tel = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        (loss + tel.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["muon", "adamw"])
def test_state_dict_round_trip_continues_bit_identically(name: str) -> None:
    cfg, optim = _cfg(), OptimConfig(name=name, lr=0.01, adamw_lr=3e-3)
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = build_optimizer(model, optim)
    _train(model, opt, tokens, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    _train(model, opt, tokens, 3)

    torch.manual_seed(1)
    resumed = Transformer(cfg)
    resumed_opt = build_optimizer(resumed, optim)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["optimizer"])
    assert [g["name"] for g in resumed_opt.param_groups] == [g["name"] for g in opt.param_groups]
    _train(resumed, resumed_opt, tokens, 3)
    for (n, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_combined_groups_drive_children_after_load() -> None:
    model = Transformer(_cfg())
    opt = build_optimizer(model, OptimConfig(name="muon"))
    assert isinstance(opt, CombinedOptimizer)
    opt.load_state_dict(opt.state_dict())
    for g in opt.param_groups:
        g["lr"] = 0.123
    for child in opt.optimizers.values():
        assert all(g["lr"] == 0.123 for g in child.param_groups)
    assert opt.last_update_rms is None
    tokens = torch.randint(0, 64, (2, 16))
    _train(model, opt, tokens, 1)
    muon = opt.optimizers["muon"]
    assert isinstance(muon, Muon)
    assert opt.last_update_rms == muon.last_update_rms is not None
    assert len(opt.state) == sum(len(o.state) for o in opt.optimizers.values())


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_router_has_its_own_lr_and_weight_decay(name: str) -> None:
    model = Transformer(_cfg())
    oc = OptimConfig(name=name, lr=0.02, adamw_lr=3e-3, router_lr=5e-4, router_weight_decay=0.0)
    groups = {g["name"]: g for g in build_optimizer(model, oc).param_groups}
    router = groups["router"]
    assert router["base_lr"] == 5e-4 and router["weight_decay"] == 0.0
    assert len(router["params"]) == model.cfg.n_moe_layers
    tied = OptimConfig(name=name, lr=0.02, adamw_lr=3e-3, router_lr=None)
    default = {g["name"]: g for g in build_optimizer(model, tied).param_groups}
    assert default["router"]["base_lr"] == default["adamw_decay"]["base_lr"]
    assert default["router"]["weight_decay"] == default["adamw_decay"]["weight_decay"]
    assert OptimConfig().router_lr == ROUTER_LR
