"""Intervals, power and sample sizes for paired comparisons of arms (``analysis.studies``).

- Seed noise (:func:`noise_of`): the standard deviation of one paired difference, pooled over
  conditions from the spread between seeds of the same condition; with one seed per condition
  the spread across conditions stands in for it (the effect is then assumed equal at every
  budget, so this noise also holds any real change with budget).
- :func:`t_interval`: Student's t interval, mean +/- t_{0.975, df} SE (Student 1908).
- Seed means (:func:`seed_mean_noise`): the sd of each seed's mean change over its
  conditions. The budgets of one seed are not independent (under prefix sharing they are
  cooldowns of one trunk), so a change averaged over budgets is resampled by seed: its SE is
  that sd / sqrt(seeds), with seeds - 1 df.
- Minimum detectable effect at 80% power, two-sided alpha 0.05:
  MDE = (z_{0.975} + z_{0.80}) SE (Cohen 1988, ch. 2; Chow, Shao & Wang 2008, sec. 3.1);
  with a t-based SE on df degrees of freedom (:func:`mde_factor`), t_{0.975, df} + t_{0.80, df}
  in place of the z quantiles (Chow, Shao & Wang 2008, sec. 3.1.1), which a few seeds need:
  4.3 + 1.1 = 5.4 at 2 df against 2.8.
- Seeds needed (:func:`seeds_needed`): the least n >= 2 with
  (t_{0.975, n-1} + t_{0.80, n-1}) sd / sqrt(n) <= |effect| for an effect; for equivalence
  within +/- margin at a true difference of 0, (t_{0.975, n-1} + t_{0.90, n-1}) sd / sqrt(n)
  <= margin (two one-sided tests at 0.025 each, the 95% interval the verdicts use;
  Schuirmann 1987; Chow, Shao & Wang 2008, secs. 3.2 and 3.1.1). The t quantiles are those
  of the interval the n seeds would give; z quantiles (2.80, 3.24) undercount at a few seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

Z_975 = float(stats.norm.ppf(0.975))
Z_80 = float(stats.norm.ppf(0.80))
Z_90 = float(stats.norm.ppf(0.90))
POWER_FACTOR = Z_975 + Z_80
"""(z_{0.975} + z_{0.80}) = 2.80: MDE / SE at 80% power, two-sided alpha 0.05."""
EQUIVALENCE_FACTOR = Z_975 + Z_90
"""(z_{0.975} + z_{0.90}) = 3.24: margin / SE for 80% power of an equivalence test at 0."""


@dataclass(frozen=True)
class Noise:
    """sd of one paired difference, its degrees of freedom, and where it came from."""

    sd: float
    df: int
    source: Literal["seeds", "conditions", "none"]


def noise_of(conditions: list[str], values: list[float]) -> Noise:
    """Pooled within-condition sd when some condition has >= 2 seeds, else the sd across
    conditions (module docstring); df 0 and NaN when neither exists."""
    x = np.asarray(values, dtype=np.float64)
    cond = np.asarray(conditions, dtype=object)
    names, codes = np.unique(cond, return_inverse=True)
    counts = np.bincount(codes, minlength=len(names))
    if counts.max(initial=0) >= 2:
        means = np.bincount(codes, weights=x) / counts
        df = int((counts - 1).sum())
        return Noise(float(np.sqrt(np.sum((x - means[codes]) ** 2) / df)), df, "seeds")
    if len(x) >= 2:
        return Noise(float(np.std(x, ddof=1)), len(x) - 1, "conditions")
    return Noise(float("nan"), 0, "none")


def seed_mean_noise(seeds: list[int], values: list[float]) -> Noise:
    """sd of the seeds' mean values and seeds - 1 df (module docstring); df 0 and NaN with
    fewer than two seeds."""
    frame = pd.DataFrame({"seed": seeds, "value": values})
    means = frame.groupby("seed")["value"].mean().to_numpy(np.float64)
    if len(means) < 2:
        return Noise(float("nan"), 0, "none")
    return Noise(float(np.std(means, ddof=1)), len(means) - 1, "seeds")


def mde_factor(df: int) -> float:
    """MDE / SE at 80% power, two-sided alpha 0.05, for a t-based SE on ``df`` degrees of
    freedom (module docstring); NaN when df < 1."""
    if df < 1:
        return float("nan")
    return float(stats.t.ppf(0.975, df) + stats.t.ppf(0.80, df))


def t_interval(mean: float, se: float, df: int) -> tuple[float, float]:
    """Two-sided 95% Student t interval (NaN when df < 1 or se is not finite)."""
    if df < 1 or not math.isfinite(se):
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, df)) * se
    return mean - half, mean + half


def seeds_needed(sd: float, effect: float, *, equivalence: bool = False,
                 cap: int = 10_000) -> int | None:
    """Paired seeds per condition for 80% power (module docstring), t quantiles on n - 1 df;
    None when unknown."""
    if not (math.isfinite(sd) and math.isfinite(effect)) or effect == 0:
        return None
    power = 0.90 if equivalence else 0.80
    z_n = math.ceil(((EQUIVALENCE_FACTOR if equivalence else POWER_FACTOR) * sd / effect) ** 2)
    for n in range(max(2, z_n), cap + 1):  # the t factor exceeds the z one: n >= the z answer
        factor = stats.t.ppf(0.975, n - 1) + stats.t.ppf(power, n - 1)
        if factor * sd / math.sqrt(n) <= abs(effect):
            return n
    return cap
