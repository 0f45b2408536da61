"""The trial runner: resume equality, divergence, entropy floor, end-to-end on real code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.config import TrialConfig
from harness.tracking import MemoryTracker
from harness.train import CKPT, FINAL, RESULT, run_trial

TINY_MODEL = {
    "d_model": 32, "n_layers": 2, "first_k_dense": 1, "dense_ffn_dim": 64,
    "attention": {"n_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                  "qk_rope_head_dim": 4, "v_head_dim": 8},
    "moe": {"n_routed_experts": 4, "top_k": 2, "expert_ffn_dim": 16},
}


def tiny(**over: dict) -> TrialConfig:
    raw = {
        "model": TINY_MODEL,
        "optim": {"name": "muon", "lr": 0.02},
        "data": {"corpus": "synthetic", "synthetic_vocab": 32, "synthetic_tokens": 200_000,
                 "val_tokens": 4096},
        "train": {"tokens": 24 * 1024, "batch_tokens": 1024, "seq_len": 64, "log_every": 2,
                  "eval_every": 4096, "checkpoint_every": 5 * 1024, "threads": 1},
    }
    for key, value in over.items():
        raw[key] = {**raw[key], **value}
    return TrialConfig.model_validate(raw)


def test_resumed_curve_equals_uninterrupted(tmp_path: Path) -> None:
    trial = tiny(train={"micro_batch_tokens": 512})
    straight = MemoryTracker()
    run_trial(trial, straight, tmp_path / "a", cache_dir=tmp_path)
    broken = MemoryTracker()
    first = run_trial(trial, broken, tmp_path / "b", cache_dir=tmp_path, stop_after=13)
    assert first.status == "interrupted" and (tmp_path / "b" / CKPT).exists()
    resumed = MemoryTracker()  # a fresh process: replayed rows + the rest
    result = run_trial(trial, resumed, tmp_path / "b", cache_dir=tmp_path)
    assert result.status == "finished" and resumed.status == "finished"
    for key in ("train/loss", "val/loss", "test/loss", "grad_norm", "attn/max_logit",
                "moe/imbalance"):
        assert resumed.history(key) == straight.history(key), key
    assert (tmp_path / "b" / RESULT).exists() and not (tmp_path / "b" / CKPT).exists()
    assert (tmp_path / "b" / FINAL).exists()  # the final weights stay, for `harness rescore`
    (test_point,) = straight.history("test/loss")  # the last step only; val at every eval
    assert test_point == (trial.train.steps, result.final_test_loss)
    assert len(straight.history("val/loss")) > 1 and "val_sha" in straight.params


def test_finished_trial_is_replayed_not_rerun(tmp_path: Path) -> None:
    trial = tiny()
    run_trial(trial, MemoryTracker(), tmp_path / "c", cache_dir=tmp_path)
    again = MemoryTracker()
    result = run_trial(trial, again, tmp_path / "c", cache_dir=tmp_path)
    assert result.status == "finished" and result.wall_s > 0
    assert again.history("train/loss")[-1][0] == trial.train.steps
    assert "max_logits.csv" in again.artifacts and again.status == "finished"


def test_absurd_learning_rate_is_recorded_as_diverged(tmp_path: Path) -> None:
    trial = tiny(optim={"name": "adamw", "lr": 50.0}, train={"diverge_loss": 6.0,
                                                             "grad_clip": None})
    tracker = MemoryTracker()
    result = run_trial(trial, tracker, tmp_path / "d", cache_dir=tmp_path)
    assert result.status == "diverged" and tracker.status == "diverged"
    assert result.steps < trial.train.steps
    assert not tracker.history("test/loss") and not (tmp_path / "d" / FINAL).exists()


def test_val_loss_falls_toward_and_stays_above_the_entropy_floor(tmp_path: Path) -> None:
    trial = tiny(
        data={"synthetic_branching": 3},
        train={"tokens": 80 * 1024, "eval_every": 8192},
        optim={"name": "adamw", "lr": 1e-2},
    )
    tracker = MemoryTracker()
    run_trial(trial, tracker, None, cache_dir=tmp_path)
    from harness.data import load_data

    floor = load_data(trial.data, tmp_path).entropy
    assert floor is not None
    vals = [v for _, v in tracker.history("val/loss")]
    start_gap = math.log(32) - floor
    assert vals[-1] < floor + 0.35 * start_gap, (vals, floor)
    assert min(vals) > floor - 0.02, (vals, floor)


@pytest.mark.slow
def test_stdlib_end_to_end_logs_every_metric(tmp_path: Path) -> None:
    trial = tiny(
        data={"corpus": "stdlib", "val_tokens": 8192},
        optim={"name": "muon", "lr": 0.02, "qk_clip_tau": 50.0},
        train={"tokens": 96 * 1024, "eval_every": 32 * 1024, "log_every": 8},
    )
    tracker = MemoryTracker()
    result = run_trial(trial, tracker, tmp_path / "e", cache_dir=tmp_path)
    assert result.final_val_loss < math.log(256) - 2.0
    for key in ("train/loss", "val/loss", "lr", "grad_norm", "muon/update_rms", "tokens",
                "flops", "perf/tokens_per_s", "attn/max_logit", "attn/max_logit/L0",
                "attn/heads_clipped", "moe/imbalance", "moe/dead_experts/L1",
                "moe/bias_range/L1"):
        assert key in tracker.metrics, key
    assert tracker.params["model.moe.n_routed_experts"] == 4
    assert "git_sha" in tracker.tags and "trial.yaml" in tracker.artifacts
