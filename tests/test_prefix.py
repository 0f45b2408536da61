"""Shared stable prefixes (harness.prefix): planning, and a branch equal to its solo run."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweeptools import trial_dict

from harness.config import TrialConfig
from harness.prefix import PrefixStore, lineage_key, plan_sharing, why_not_shared
from harness.record import steps_trained
from harness.schedule import decay_start, lr_multiplier
from harness.tracking import MemoryTracker
from harness.train import run_trial

SHARED = {"warmup_steps": 2, "decay_frac": 0.25, "checkpoint_every": 4096}


def trial(steps: int, **train: object) -> TrialConfig:
    return TrialConfig.model_validate(trial_dict(steps, **{**SHARED, **train}))


def curve(tracker: MemoryTracker) -> dict[str, dict[int, float]]:
    """Every logged metric but the timings (they are wall-clock, never equal)."""
    return {k: v for k, v in tracker.metrics.items() if not k.startswith("perf/")}


def test_stable_lr_does_not_depend_on_the_budget() -> None:
    short, long = trial(25), trial(40)
    start = decay_start(short.train)
    assert start == 19 and decay_start(long.train) == 30
    assert [lr_multiplier(short.train, s) for s in range(start)] == \
        [lr_multiplier(long.train, s) for s in range(start)]
    assert lr_multiplier(short.train, start) < 1.0 == lr_multiplier(long.train, start)


def test_who_shares_and_why_not() -> None:
    assert why_not_shared(trial(25).train) is None
    assert "cosine" in str(why_not_shared(trial(25, schedule="cosine").train))
    assert "warmup_steps" in str(why_not_shared(trial(25, warmup_steps=None).train))
    assert "no cooldown" in str(why_not_shared(trial(25, decay_frac=0.0).train))
    assert "into the cooldown" in str(why_not_shared(trial(25, warmup_steps=20).train))
    assert "no stable phase" in str(why_not_shared(trial(25, warmup_steps=0, decay_frac=1.0).train))
    assert lineage_key(trial(25)) == lineage_key(trial(40))
    assert lineage_key(trial(25)) != lineage_key(trial(25, seed=1))


def test_plan_picks_the_longest_as_trunk_and_counts_the_saving(tmp_path: Path) -> None:
    trials = [trial(16), trial(24), trial(40), trial(24, seed=1), trial(24, schedule="cosine"),
              trial(40, schedule="cosine"), trial(24, seed=2, schedule="cosine")]
    plan = plan_sharing(trials, PrefixStore(tmp_path))
    trunk = plan.shares[trials[2].hash]
    assert trunk.role == "trunk" and trunk.trunk is None
    assert trunk.saves == (12, 18, 30)  # both branches' cooldown starts, and its own
    for t in trials[:2]:
        share = plan.shares[t.hash]
        assert (share.role, share.trunk, share.start) == ("branch", trials[2].hash,
                                                          decay_start(t.train))
    assert plan.shares[trials[3].hash].role == "alone"  # another seed: its own lineage
    assert "cosine" in plan.reasons[trials[4].hash] and trials[4].hash not in plan.shares
    assert trials[6].hash not in plan.reasons  # no other budget: nothing it could share
    budgets, trained = plan.tokens(trials)
    assert budgets == (16 + 24 + 40 + 24 + 24 + 40 + 24) * 512
    assert trained == budgets - (12 + 18) * 512
    off = plan_sharing(trials, PrefixStore(tmp_path), enabled=False)
    assert not off.shares and off.tokens(trials) == (budgets, budgets)


def test_a_longer_budget_added_later_extends_from_the_last_stable_checkpoint(
        tmp_path: Path) -> None:
    store = PrefixStore(tmp_path)
    key = lineage_key(trial(40))
    for step in (12, 30):
        store.path(key, step).parent.mkdir(parents=True, exist_ok=True)
        store.path(key, step).write_bytes(b"")
    plan = plan_sharing([trial(64)], store)
    assert plan.inherited[trial(64).hash] == 30
    plan = plan_sharing([trial(20)], store)  # shorter, added later: the nearest one below
    assert plan.inherited[trial(20).hash] == 12
    # beside a longer one that starts past its cooldown start (15): it does not wait for a
    # checkpoint the trunk will never write
    plan = plan_sharing([trial(20), trial(64)], store)
    share = plan.shares[trial(20).hash]
    assert (share.role, share.trunk, plan.inherited[trial(20).hash]) == ("alone", None, 12)
    assert plan.inherited[trial(64).hash] == 30


def test_branch_equals_the_same_trial_run_alone(tmp_path: Path) -> None:
    short, long = trial(25), trial(40)
    plan = plan_sharing([short, long], PrefixStore(tmp_path / "store"))
    prefixes = PrefixStore(tmp_path / "store")
    shared_long, shared_short = MemoryTracker(), MemoryTracker()
    run_trial(long, shared_long, tmp_path / "long", share=plan.shares[long.hash],
              prefixes=prefixes)
    assert prefixes.steps(lineage_key(long)) == [19, 30]
    run_trial(short, shared_short, tmp_path / "short", share=plan.shares[short.hash],
              prefixes=prefixes)
    alone_long, alone_short = MemoryTracker(), MemoryTracker()
    run_trial(long, alone_long, tmp_path / "alone-long")
    run_trial(short, alone_short, tmp_path / "alone-short")

    assert curve(shared_short) == curve(alone_short)  # bit for bit, prefix included
    assert curve(shared_long) == curve(alone_long)
    assert shared_short.history("test/loss") == alone_short.history("test/loss")
    assert min(shared_short.metrics["train/loss"]) == 2  # the whole curve, from the first log
    assert steps_trained(tmp_path / "short") == 25 - 19  # its cooldown only
    assert steps_trained(tmp_path / "long") == 40
    assert shared_short.tags["lineage.role"] == "branch"
    assert shared_short.tags["lineage.trunk_hash"] == long.hash
    assert shared_short.tags["lineage.branch_tokens"] == str(19 * 512)
    assert shared_short.tags["work.tokens_trained"] == str(6 * 512)
    assert shared_long.tags["lineage.role"] == "trunk"
    assert "lineage.trunk_hash" not in shared_long.tags


def test_a_branch_whose_trunk_ended_early_starts_from_what_it_reached(tmp_path: Path) -> None:
    short, long = trial(25), trial(40)
    plan = plan_sharing([short, long], PrefixStore(tmp_path))
    prefixes = PrefixStore(tmp_path)
    prefixes.path(plan.shares[short.hash].lineage, 19).parent.mkdir(parents=True)
    run_trial(long, MemoryTracker(), tmp_path / "long", share=plan.shares[long.hash],
              prefixes=prefixes, stop_after=10)
    assert prefixes.steps(lineage_key(long)) == []  # killed before the branch point
    branch, alone = MemoryTracker(), MemoryTracker()
    run_trial(short, branch, tmp_path / "short", share=plan.shares[short.hash],
              prefixes=prefixes)
    run_trial(short, alone, tmp_path / "alone")
    assert curve(branch) == curve(alone)
    assert branch.tags["lineage.role"] == "alone"  # it trained its own prefix
    assert steps_trained(tmp_path / "short") == 25


@pytest.mark.parametrize("schedule", ["cosine"])
def test_a_cosine_branch_would_not_equal_its_solo_run(schedule: str) -> None:
    """Why cosine sweeps do not share: the lr at a step depends on the budget."""
    short, long = trial(25, schedule=schedule), trial(40, schedule=schedule)
    assert lr_multiplier(short.train, 10) != lr_multiplier(long.train, 10)
    assert not plan_sharing([short, long], None).shares


def test_branches_wait_for_their_checkpoint_and_then_go_first(tmp_path: Path) -> None:
    from harness.launch.search import BranchWait
    from harness.launch.worker import TrialSpec

    trials = [trial(16), trial(40), trial(24, seed=1)]
    store = PrefixStore(tmp_path)
    plan = plan_sharing(trials, store)
    specs = [TrialSpec.of(t, tmp_path, tmp_path, 1, plan.shares.get(t.hash)) for t in trials]
    wait = BranchWait(specs, store)
    assert not wait.ready(specs[0])  # its trunk has not reached step 12
    assert [wait.next(), wait.next()] == [specs[1], specs[2]]  # trunk, then the other lineage
    assert wait.next() is None  # only the waiting branch is left
    path = store.path(plan.shares[trials[0].hash].lineage, 12)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert wait.next() == specs[0]
    other = BranchWait(specs, store)
    other.ended.add(trials[1].hash)
    path.unlink()
    assert other.next() == specs[0]  # the trunk ended without it: the branch goes anyway
