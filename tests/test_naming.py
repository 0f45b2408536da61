"""Run names (harness.naming): what varies in the sweep, in short labels, arm always, seed last."""

from __future__ import annotations

from harness.config import SweepConfig
from harness.naming import run_name


def names(grid: dict, seeds: list[int] | None = None, base: dict | None = None) -> list[str]:
    sweep = SweepConfig.model_validate({"name": "n", "grid": grid, "seeds": seeds or [0],
                                        "base": base or {"train": {"tokens": 16384}}})
    return [run_name(t, sweep) for t in sweep.expand()]


def test_short_labels_arm_and_seed() -> None:
    assert names({"model.moe.n_routed_experts": [4, 16], "optim.name": ["adamw", "muon"]}) == [
        "E4-adamw-s0", "E4-muon-s0", "E16-adamw-s0", "E16-muon-s0"]
    assert names({"optim.lr": [0.02]}, seeds=[0, 1]) == ["lr0.02-adamw-s0", "lr0.02-adamw-s1"]


def test_values_are_compact_and_unlabelled_axes_name_their_key() -> None:
    assert names({"train.tokens": [1_000_000, 131072]}) == ["T1M-adamw-s0", "T131.072k-adamw-s0"]
    assert names({"optim.lr": [3e-3]}) == ["lr3e-3-adamw-s0"]
    assert names({"model.norm_eps": [1e-5]}) == ["norm_eps=1e-5-adamw-s0"]


def test_a_null_value_reads_off_and_the_clip_shows_in_the_arm() -> None:
    got = names({"optim.qk_clip_tau": [None, 100.0]}, base={"optim": {"name": "muon"},
                                                          "train": {"tokens": 16384}})
    assert got == ["tauoff-muon-s0", "tau100-muonclip-s0"]


def test_values_get_the_digits_that_tell_them_apart() -> None:
    assert names({"optim.lr": [1.0e-3, 1.5e-3, 2.0e-3, 3.0e-3]}) == [
        "lr1e-3-adamw-s0", "lr1.5e-3-adamw-s0", "lr2e-3-adamw-s0", "lr3e-3-adamw-s0"]
    assert names({"train.tokens": [1_500_000, 1_500_001]}) == ["T1.5M-adamw-s0",
                                                               "T1.500001M-adamw-s0"]
    assert names({"optim.lr": [0.02, 0.0200001]}) == ["lr0.02-adamw-s0", "lr0.0200001-adamw-s0"]


def test_only_the_axis_that_collides_gets_more_digits() -> None:
    got = names({"optim.lr": [2.0e-3, 2.4e-3], "train.tokens": [1_500_000, 2_000_000]})
    assert got == ["lr2e-3-T1.5M-adamw-s0", "lr2e-3-T2M-adamw-s0",
                   "lr2.4e-3-T1.5M-adamw-s0", "lr2.4e-3-T2M-adamw-s0"]
