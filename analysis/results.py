"""Typed results of a study: what ``analysis.studies`` computes and ``analysis.claims`` reads.

Each result is frozen and has a ``.table()`` for its CSV; claims read fields, never columns.

- :class:`Estimate`: a number with its 95% interval and how it was obtained, or a reason why
  it is *not estimable* (then the number is never shown as a result).
- :class:`Multiplier`: an arm's compute multiplier C_base(L*) / C_arm(L*) over the baseline at
  each target loss, in FLOPs and in measured wall-clock, with the pre-registered read-out.
- :class:`PairedChange`: the final-loss change of an arm over paired baseline runs (same
  condition and seed), overall and at the largest common budget, with its seed noise and the
  minimum detectable effect (``analysis.inference``).
- :class:`SparsityLaw`: the joint K2 law's parameters and its pairwise multipliers.
- :class:`Logits`: peak and late max attention logits per arm.
- :class:`Evidence`: what one claimed arm is judged on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.inference import Noise

NAN = float("nan")


@dataclass(frozen=True)
class Estimate:
    """``value`` with its 95% interval [lo, hi]; ``reason`` non-empty: not estimable (why);
    ``method``: how the interval was obtained (resampling unit, failed share, or t df)."""

    value: float
    lo: float = NAN
    hi: float = NAN
    reason: str = ""
    method: str = ""
    se: float = NAN  # standard error (of log value for multipliers)

    @property
    def estimable(self) -> bool:
        return not self.reason and math.isfinite(self.lo) and math.isfinite(self.hi)

    def scaled(self, factor: float) -> Estimate:
        """The same estimate times ``factor`` (a known conversion, e.g. FLOPs to seconds)."""
        return Estimate(self.value * factor, self.lo * factor, self.hi * factor, self.reason,
                        self.method, self.se)


@dataclass(frozen=True)
class MultiplierAt:
    """The multiplier at one target loss: in FLOPs and in wall-clock seconds (same hardware)."""

    L_star: float
    flops: Estimate
    wallclock: Estimate
    why_missing: str = ""  # L* not answered by the frontiers (below a floor, extrapolated)


@dataclass(frozen=True)
class Multiplier:
    """``arm`` over ``baseline``: ratio > 1 means the arm needs fewer FLOPs (seconds) for L*.

    ``throughput_ratio``: the arm's measured FLOP/s over the baseline's (``perf/tokens_per_s``
    x FLOPs per token, median over runs), so wall-clock = FLOPs multiplier x throughput ratio.
    ``read``: the pre-registered read-out point (``analysis.claim.read_at``), if answered.
    """

    arm: str
    baseline: str
    frontier: str
    at: tuple[MultiplierAt, ...]
    throughput_ratio: float = NAN
    read: MultiplierAt | None = None
    passed_over: tuple[str, ...] = ()
    n_seeds: int = 1

    def table(self) -> pd.DataFrame:
        rows = [{"arm": self.arm, "baseline": self.baseline, "L_star": p.L_star,
                 "ratio": p.flops.value, "lo": p.flops.lo, "hi": p.flops.hi,
                 "wallclock_ratio": p.wallclock.value, "wallclock_lo": p.wallclock.lo,
                 "wallclock_hi": p.wallclock.hi, "se_log": p.flops.se,
                 "interval": p.flops.method, "not_estimable": p.flops.reason,
                 "frontier": self.frontier, "reason": p.why_missing,
                 "read_out": self.read is not None and p.L_star == self.read.L_star}
                for p in self.at]
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class Pair:
    """One paired comparison: the arm's run and the baseline's at the same condition and seed."""

    condition: str
    seed: int
    budget: str
    rel_change: float
    rel_flops: float


@dataclass(frozen=True)
class PairedChange:
    """Relative final-loss change of ``arm`` over ``baseline`` across paired runs.

    ``overall``: mean over every pair; ``largest``: mean over the pairs at the largest common
    budget (``largest_budget``), each with a t interval from ``noise``; ``mde``: the smallest
    true change at the largest budget that this design detects with 80% power (two-sided
    alpha 0.05); ``n_seeds``: pairs at the largest budget.
    """

    arm: str
    baseline: str
    pairs: tuple[Pair, ...]
    overall: Estimate
    largest: Estimate
    largest_budget: str
    noise: Noise
    mde: float
    n_seeds: int
    largest_label: str = ""  # the largest budget as the report names it (its condition)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"arm": self.arm, "baseline": self.baseline, "condition": p.condition,
                              "seed": p.seed, "budget": p.budget, "rel_change": p.rel_change,
                              "rel_flops": p.rel_flops} for p in self.pairs])

    def summary_row(self) -> dict[str, object]:
        return {"arm": self.arm, "baseline": self.baseline, "mean": self.overall.value,
                "lo": self.overall.lo, "hi": self.overall.hi,
                "largest_budget": self.largest_label, "at_largest": self.largest.value,
                "at_largest_lo": self.largest.lo, "at_largest_hi": self.largest.hi,
                "noise_sd": self.noise.sd, "noise_df": self.noise.df,
                "noise_from": self.noise.source, "mde_80": self.mde, "n_seeds": self.n_seeds,
                "not_estimable": self.largest.reason}


@dataclass(frozen=True)
class SparsityLaw:
    """L = E + A (m_s C)^-alpha over arms (``analysis.sparsity``); ``vs_base``: each arm's
    multiplier over the baseline (read at ``L_star``); ``pairs``: every ordered pair."""

    E: Estimate
    alpha: Estimate
    A: float
    L_star: float
    multipliers: tuple[tuple[str, Estimate], ...]
    vs_base: tuple[Multiplier, ...]
    pairs: tuple[Multiplier, ...]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"arm": arm, "multiplier": m.value, "lo": m.lo, "hi": m.hi,
                              "not_estimable": m.reason, "E": self.E.value, "A": self.A,
                              "alpha": self.alpha.value} for arm, m in self.multipliers])


@dataclass(frozen=True)
class ArmLogits:
    """Max attention logit of one arm in one condition: medians over its runs (seeds) of each
    run's peak and late (last-quarter) mean; medians are never taken across conditions, whose
    runs differ by design (e.g. a raised lr that makes unclipped logits run away)."""

    arm: str
    peak: float
    late: float
    tau: float  # NaN: no clip
    condition: str = "all"


@dataclass(frozen=True)
class Logits:
    """The max-logit study's read-out; ``base``: the unclipped arm."""

    base: str
    arms: tuple[ArmLogits, ...]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([vars(a) for a in self.arms])


@dataclass(frozen=True)
class Evidence:
    """What one claimed arm is judged on; ``edge_cells``: conditions where the arm's or the
    baseline's best ``best_of`` value sits at the edge of its own grid; ``health``: per side
    (arm, baseline), (runs with healthy routing, runs judged), None without MoE curves."""

    arm: str
    baseline: str
    multiplier: Multiplier | None = None
    change: PairedChange | None = None
    edge_cells: tuple[str, ...] = field(default=())
    health: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None)
