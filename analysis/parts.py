"""The pieces a study is built from while ``analysis.studies`` runs: findings, figures, tables.

Also :class:`Design`: what every comparison of one sweep shares (its runs and points, arm
order, baseline, bootstrap settings, resampling unit, measured throughput per arm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.axes import Axes

from analysis.points import FitPoints, Runs
from analysis.results import Multiplier, PairedChange, SparsityLaw


@dataclass(frozen=True)
class Finding:
    """One sentence of the report and the published number it sits next to (if any)."""

    text: str
    reference: str | None = None


@dataclass(frozen=True)
class FigureJob:
    """A figure to write: ``draw(ax, data)`` from ``analysis.plots`` and a caption."""

    name: str
    draw: Callable[[Axes, Any], None]
    data: Any
    caption: str


@dataclass
class Parts:
    """Accumulates the findings, tables, figures and typed results of a study."""

    findings: list[Finding] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[FigureJob] = field(default_factory=list)
    multipliers: list[Multiplier] = field(default_factory=list)
    changes: list[PairedChange] = field(default_factory=list)
    law: SparsityLaw | None = None

    def say(self, text: str, ref: str | None = None) -> None:
        self.findings.append(Finding(text, ref))


@dataclass(frozen=True)
class Design:
    """What the comparisons of one sweep share.

    ``by_seed``: the bootstrap resamples whole seeds within each arm (some cell has >= 2
    seeds), else runs within each arm; ``n_seeds``: most seeds in a cell; ``flop_rate``: measured
    FLOP/s per arm label (median over its selected runs; empty when not logged);
    ``read_at``: the declared read-out point of a multiplier claim.
    """

    name: str
    runs: Runs
    points: FitPoints
    order: tuple[str, ...]
    base: str
    n_boot: int
    seed: int
    by_seed: bool
    n_seeds: int
    flop_rate: dict[str, float]
    read_at: float | str = "largest_budget"
    where: dict[str, Any] = field(default_factory=dict)  # analysis.claim.where

    @property
    def unit(self) -> str:
        return "seeds within each arm" if self.by_seed else "runs within each arm"

    def with_seeds(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (with a ``run`` column) plus each run's ``seed`` when resampling seeds."""
        if not self.by_seed:
            return frame
        seed = self.runs.frame.drop_duplicates("run_id").set_index("run_id")["seed"]
        return frame.assign(seed=frame["run"].map(seed))

    def frame(self, label: str) -> pd.DataFrame:
        """Fit points of one arm: ``run``, ``flops``, ``loss`` (and ``seed``, see above)."""
        f = self.points.frame
        return self.with_seeds(f.loc[f["label"] == label, ["run", "flops", "loss"]])

    def throughput_ratio(self, label: str) -> float:
        """The arm's FLOP/s over the baseline's (NaN when either was not logged)."""
        a, b = self.flop_rate.get(label), self.flop_rate.get(self.base)
        return a / b if a and b else float("nan")
