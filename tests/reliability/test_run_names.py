"""Run names never collide within a sweep, and the names of the shipped sweeps do not move.

Before: values were rounded to a fixed compact form (``lr`` to one significant digit), so an lr
grid ``[1.0e-3, 1.5e-3, 2.0e-3, 3.0e-3]`` gave two ``lr2e-3-adamw-s0`` runs, and tokens
1500000 and 1500001 both read ``T1.5M``. Now each axis takes the fewest extra digits that tell
its values apart. ``old_name`` below is the naming of before, kept as the reference: wherever it
gave distinct names (every shipped sweep and profile), the names are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sweeptools import harness, write_sweep

from harness.config import SweepConfig, TrialConfig, flatten, load_sweep
from harness.naming import _SHORT, NULL_MEANS, run_name

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def _old_fmt(value: Any) -> str:
    """The compact form of before (harness/naming.py up to this fix)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and value >= 10_000:
        value = int(value)
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:g}M" if value >= 1_000_000 else f"{value / 1e3:g}k"
    if isinstance(value, float) and 0 < abs(value) < 0.01:
        return f"{value:.0e}".replace("e-0", "e-")
    return f"{value:g}" if isinstance(value, float) else str(value)


def old_name(trial: TrialConfig, sweep: SweepConfig) -> str:
    """Run names as they were before the fix."""
    flat = flatten(trial.model_dump(mode="json"))
    parts = []
    for key in sweep.axes:
        if key in ("optim.name", "train.seed"):
            continue
        label = _SHORT.get(key)
        value = _old_fmt(flat[key]) if flat.get(key) is not None else NULL_MEANS.get(key, "off")
        parts.append(f"{label}{value}" if label else f"{key.rsplit('.', 1)[-1]}={value}")
    return "-".join([*parts, trial.optim.arm, f"s{trial.train.seed}"])


CASES = [(p, prof) for p in SWEEPS
         for prof in [None, *yaml.safe_load(p.read_text()).get("profiles", {})]]


@pytest.mark.parametrize(("path", "profile"), CASES,
                         ids=[f"{p.stem}-{prof or 'default'}" for p, prof in CASES])
def test_shipped_sweeps_keep_their_names_and_they_are_unique(path: Path, profile: str) -> None:
    sweep = load_sweep(path, profile)
    trials = sweep.expand()
    new = [run_name(t, sweep) for t in trials]
    old = [old_name(t, sweep) for t in trials]
    assert len(set(new)) == len(new), new
    assert len(set(old)) == len(old)  # none of them collided before either ...
    assert new == old  # ... so none changes


def sweep_of(grid: dict[str, list[Any]], seeds: list[int] | None = None) -> SweepConfig:
    return SweepConfig.model_validate({"name": "n", "grid": grid, "seeds": seeds or [0],
                                       "base": {"train": {"tokens": 16384}}})


def test_the_colliding_grids_of_the_issue_get_distinct_names() -> None:
    lr = sweep_of({"optim.lr": [1.0e-3, 1.5e-3, 2.0e-3, 3.0e-3]})
    assert [old_name(t, lr) for t in lr.expand()].count("lr2e-3-adamw-s0") == 2  # before
    assert [run_name(t, lr) for t in lr.expand()] == [
        "lr1e-3-adamw-s0", "lr1.5e-3-adamw-s0", "lr2e-3-adamw-s0", "lr3e-3-adamw-s0"]
    tokens = sweep_of({"train.tokens": [1_500_000, 1_500_001]})
    assert {old_name(t, tokens) for t in tokens.expand()} == {"T1.5M-adamw-s0"}  # before
    assert [run_name(t, tokens) for t in tokens.expand()] == ["T1.5M-adamw-s0",
                                                              "T1.500001M-adamw-s0"]


LRS = st.lists(st.floats(1e-9, 1.0, allow_nan=False), min_size=1, max_size=6, unique=True)
TOKENS = st.lists(st.integers(8192, 2**40), min_size=1, max_size=6, unique=True)


@settings(max_examples=200, deadline=None, database=None)
@given(lrs=LRS, tokens=TOKENS)
def test_any_grid_gives_unique_names_compact_where_that_was_unique(
    lrs: list[float], tokens: list[int]
) -> None:
    sweep = sweep_of({"optim.lr": lrs, "train.tokens": tokens}, seeds=[0, 1])
    trials = sweep.expand()
    names = [run_name(t, sweep) for t in trials]
    assert len(set(names)) == len(names) == len(trials)
    for axis, values, label in (("optim.lr", lrs, "lr"), ("train.tokens", tokens, "T")):
        if len({_old_fmt(v) for v in values}) == len(values):  # compact names already distinct
            for t, name in zip(trials, names, strict=True):
                value = t.optim.lr if axis == "optim.lr" else t.train.tokens
                assert f"{label}{_old_fmt(value)}-" in name, (name, value)


def test_dry_run_table_lists_distinct_names(project: Path) -> None:
    path = write_sweep(project, "lrgrid", {"optim.lr": [1.0e-3, 1.5e-3, 2.0e-3, 3.0e-3]})
    out = harness("submit", str(path), "--dry-run", timeout=120).stdout
    for name in ("lr1e-3-adamw-s0", "lr1.5e-3-adamw-s0", "lr2e-3-adamw-s0", "lr3e-3-adamw-s0"):
        assert f" {name} " in out, out
    assert not (project / "mlflow.db").exists()
