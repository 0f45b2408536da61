"""Figures of `make plots`: drawing functions ``plot_x(ax, data)`` on an Axes the caller owns.

Each function draws one panel from a small frozen record of tidy frames and never touches
pyplot's global state (no ``plt.gca()``, no ``plt.figure()``; STYLE.md item 8). :func:`render`
makes a standalone figure on the Agg canvas and writes it as PNG, so nothing here needs a display
or imports ``matplotlib.pyplot``.

- :func:`plot_loss_vs_compute`: loss against training FLOPs per arm (log-log) with fitted laws
  L = E + A C^-alpha and their 95% bootstrap bands (Hoffmann et al. 2022; Kimi K2 report,
  arXiv 2507.20534, section 2.3 for the sparsity law).
- :func:`plot_multipliers`: compute multipliers C_baseline(L*) / C_arm(L*) with 95% intervals.
- :func:`plot_final_losses`: final loss (test where logged) per arm and condition (ablation
  bars, spread as error bars).
- :func:`plot_max_logit`, :func:`plot_imbalance`: a metric over training per run (max attention
  logit with the QK-Clip threshold, K2 report Algorithm 1; expert-load imbalance).

Colours, order, ticks, legends and each run's look come from :mod:`analysis.plot_style`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.plot_style import (
    FLOPS_LABEL,
    Look,
    arm_colors,
    arms_in_order,
    category_ticks,
    legend_outside,
    natural_order,
    readable_log_axis,
    reference_lines,
    run_key,
    run_looks,
    tokens_axis,
)

T = TypeVar("T")


@dataclass(frozen=True)
class LossVsCompute:
    """Loss against compute for :func:`plot_loss_vs_compute`.

    ``points``: columns ``run``, ``arm``, ``flops``, ``loss``, ``used`` (bool: the point went into
    the fit) and optionally ``condition``, ``variant`` (what else differs between runs, module
    docstring); every run is drawn as a faint line through its points, used points as markers.
    ``laws``: columns ``arm``, ``flops``, ``loss`` (the fitted law) and optionally ``lo``, ``hi``
    (95% band; NaN where there is none). ``L_star``: a target loss to mark (None: none).
    ``arms``: arm order (and so colours); arms not listed follow in natural order. ``ylabel``:
    what the loss axis shows (``FitPoints.axis``).
    """

    points: pd.DataFrame
    laws: pd.DataFrame
    title: str = ""
    legend_title: str = "arm"
    L_star: float | None = None
    arms: tuple[str, ...] = ()
    ylabel: str = "validation loss"


def _draw_runs(ax: Axes, points: pd.DataFrame, looks: dict[str, Look]) -> None:
    """Each run a thin line through its points in its look, fit points as its markers."""
    for run, g in points.groupby("run", sort=False):
        look = looks[str(run)]
        g = g.sort_values("flops")
        ax.plot(g["flops"], g["loss"], color=look.color, ls=look.ls, alpha=0.45, lw=0.9)
        used = g[g["used"].astype(bool)]
        ax.scatter(used["flops"], used["loss"], color=look.color, marker=look.marker, s=16,
                   zorder=3)


def _draw_laws(ax: Axes, laws: pd.DataFrame, colors: dict[str, Any]) -> list[tuple[Any, str]]:
    """Fitted law per arm (thick line, band where known); legend entries, ``(no fit)`` too."""
    entries: list[tuple[Any, str]] = []
    for arm, law in laws.groupby("arm", sort=False):
        law = law.sort_values("flops")
        color = colors[str(arm)]
        (line,) = ax.plot(law["flops"], law["loss"], color=color, lw=1.8, label=str(arm))
        entries.append((line, str(arm)))
        if {"lo", "hi"} <= set(law.columns) and law[["lo", "hi"]].notna().all(axis=None):
            ax.fill_between(law["flops"], law["lo"], law["hi"], color=color, alpha=0.2, lw=0)
    fitted = {e[1] for e in entries}
    entries += [(Line2D([], [], color=colors[a], marker="o", ls="none"), f"{a} (no fit)")
                for a in colors if a not in fitted]
    rank = {a: i for i, a in enumerate(colors)}
    return sorted(entries, key=lambda e: rank.get(e[1].removesuffix(" (no fit)"), len(rank)))


def plot_loss_vs_compute(ax: Axes, data: LossVsCompute) -> None:
    """Log-log loss vs FLOPs per arm: run curves, fit points, fitted laws and bands."""
    colors = arm_colors(arms_in_order(data.arms, data.points, data.laws))
    looks = run_looks(data.points, colors)
    _draw_runs(ax, data.points, looks)
    entries = _draw_laws(ax, data.laws, colors)
    entries += run_key(looks.values(), colors, arm_entries=False, markers=True)
    if data.L_star is not None:
        line = ax.axhline(data.L_star, color="0.3", ls="--", lw=1, label=f"L* = {data.L_star:.3g}")
        entries.append((line, f"L* = {data.L_star:.3g}"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axis(ax.xaxis)
    readable_log_axis(ax.yaxis)
    ax.set_xlabel(FLOPS_LABEL)
    ax.set_ylabel(data.ylabel)
    ax.set_title(data.title)
    legend_outside(ax, [e[0] for e in entries], [e[1] for e in entries], data.legend_title)
    ax.grid(True, which="both", alpha=0.2)


@dataclass(frozen=True)
class Multipliers:
    """Compute multipliers for :func:`plot_multipliers`.

    ``table``: columns ``arm``, ``L_star``, ``ratio``, ``lo``, ``hi``: arm reaches loss L* with
    ``ratio`` = C_baseline(L*) / C_arm(L*) times fewer FLOPs than ``baseline``, 95% interval
    [lo, hi]; one series (marker offset) per L*.
    """

    table: pd.DataFrame
    baseline: str
    title: str = ""
    arms: tuple[str, ...] = ()


def _star_rank(table: pd.DataFrame) -> pd.Series:
    """Series of each row: the rank of its L* within its arm (0 = lowest; arms read their own
    target losses off their own overlap with the baseline, so the k-th L* of each arm go
    together)."""
    rank = table.groupby("arm", sort=False)["L_star"].rank(method="first") - 1
    return rank.fillna(0).astype(int)


def _star_label(stars: pd.Series) -> str:
    """``L* = 1.28``, or ``L* = 1.84-1.85`` when the arms' k-th targets differ; ``any L*``."""
    v = stars.to_numpy(float)
    v = v[np.isfinite(v)]
    if not v.size:
        return "any L*"
    lo, hi = f"{v.min():.3g}", f"{v.max():.3g}"
    return f"L* = {lo}" if lo == hi else f"L* = {lo}-{hi}"


def plot_multipliers(ax: Axes, data: Multipliers) -> None:
    """Multiplier per arm with error bars, one series per target loss L*; 1 = the baseline."""
    present = set(data.table["arm"].astype(str))
    arms = [a for a in arms_in_order(data.arms, data.table) if a in present]
    x = {arm: i for i, arm in enumerate(arms)}
    table = data.table.assign(series=_star_rank(data.table))
    n = int(table["series"].max()) + 1 if len(table) else 0
    width = 0.6 / max(1, n)
    entries: list[tuple[Any, str]] = []
    for j, rows in table.groupby("series"):
        pos = np.array([x[str(a)] for a in rows["arm"]]) + (int(j) - (n - 1) / 2) * width
        ratio = rows["ratio"].to_numpy(float)
        err = np.vstack([ratio - rows["lo"].to_numpy(float), rows["hi"].to_numpy(float) - ratio])
        err = np.where(np.isfinite(err), np.maximum(err, 0.0), 0.0)
        label = _star_label(rows["L_star"])
        entries.append((ax.errorbar(pos, ratio, yerr=err, fmt="o", capsize=3, label=label),
                        label))
    label = f"baseline: {data.baseline}"
    entries.append((ax.axhline(1.0, color="0.3", ls="--", lw=1, label=label), label))
    category_ticks(ax, arms)
    ax.set_xlim(-0.5, len(arms) - 0.5)
    ax.set_ylabel(f"FLOPs of {data.baseline} / FLOPs of arm at equal loss")
    ax.set_title(data.title)
    legend_outside(ax, [e[0] for e in entries], [e[1] for e in entries])
    ax.grid(True, axis="y", alpha=0.2)


@dataclass(frozen=True)
class FinalLosses:
    """Final loss (of ``split``) per arm and condition for :func:`plot_final_losses`.

    ``table``: columns ``arm``, ``condition`` (what the bars are grouped by: budget and other
    settings held equal; groups in natural order, 500k before 1M), ``mean``, ``lo``, ``hi``
    (spread over seeds, or NaN), ``n`` (runs).
    """

    table: pd.DataFrame
    title: str = ""
    legend_title: str = "arm"
    arms: tuple[str, ...] = ()
    split: str = "val"


def plot_final_losses(ax: Axes, data: FinalLosses) -> None:
    """Grouped bars: one group per condition, one bar per arm, min-max spread as error bars."""
    colors = arm_colors(arms_in_order(data.arms, data.table))
    arms = [a for a in colors if a in set(data.table["arm"].astype(str))]
    conditions = natural_order(data.table["condition"])
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        rows = data.table[data.table["arm"].astype(str) == arm]
        pos = [conditions.index(str(c)) + (i - (len(arms) - 1) / 2) * width
               for c in rows["condition"]]
        mean = rows["mean"].to_numpy(float)
        err = np.vstack([mean - rows["lo"].to_numpy(float), rows["hi"].to_numpy(float) - mean])
        err = np.where(np.isfinite(err), np.maximum(err, 0.0), 0.0)
        ax.bar(pos, mean, width=width, color=colors[arm], label=arm, yerr=err, capsize=3)
    values = data.table[["mean", "lo", "hi"]].to_numpy(float)
    finite = values[np.isfinite(values)]
    if finite.size:
        span = max(float(finite.max() - finite.min()), 1e-3 * float(finite.max()))
        ax.set_ylim(float(finite.min()) - 0.5 * span, float(finite.max()) + 0.3 * span)
    category_ticks(ax, conditions)
    ax.set_ylabel(f"final {data.split} loss (axis does not start at 0)")
    ax.set_title(data.title)
    handles, labels = ax.get_legend_handles_labels()
    legend_outside(ax, handles, labels, data.legend_title)
    ax.grid(True, axis="y", alpha=0.2)


@dataclass(frozen=True)
class Traces:
    """One metric over training per run for :func:`plot_max_logit` / :func:`plot_imbalance`.

    ``frame``: columns ``run``, ``arm``, ``tokens``, ``value`` and optionally ``condition``
    (one line style per condition when there are several) and ``variant`` (one shade per value
    within an arm, e.g. ``lr=0.01``). ``lines``: horizontal reference lines (value, label),
    e.g. the QK-Clip threshold tau.
    """

    frame: pd.DataFrame
    lines: tuple[tuple[float, str], ...] = ()
    title: str = ""
    legend_title: str = "arm"
    arms: tuple[str, ...] = ()


def _plot_traces(ax: Axes, data: Traces, ylabel: str, log_y: bool) -> None:
    colors = arm_colors(arms_in_order(data.arms, data.frame))
    looks = run_looks(data.frame, colors)
    for run, g in data.frame.groupby("run", sort=False):
        look = looks[str(run)]
        g = g.sort_values("tokens")
        ax.plot(g["tokens"], g["value"], color=look.color, ls=look.ls, lw=1.2, alpha=0.9)
    entries = [*run_key(looks.values(), colors, arm_entries=True),
               *reference_lines(ax, data.lines)]
    if log_y and len(data.frame) and (data.frame["value"] > 0).all():
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
    tokens_axis(ax.xaxis)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(data.title)
    legend_outside(ax, [e[0] for e in entries], [e[1] for e in entries], data.legend_title)
    ax.grid(True, alpha=0.2)


def plot_max_logit(ax: Axes, data: Traces) -> None:
    """Max pre-softmax attention logit over training (max over layers, heads and the batch)."""
    _plot_traces(ax, data, "max attention logit", log_y=True)


def plot_imbalance(ax: Axes, data: Traces) -> None:
    """Expert-load imbalance (max / mean load over experts, mean over MoE layers) over training."""
    _plot_traces(ax, data, "expert-load imbalance (max / mean load)", log_y=False)


def figure_for(draw: Callable[[Axes, T], None], data: T,
               size: tuple[float, float] = (8.0, 4.6)) -> Figure:
    """A new Agg figure (constrained layout, room for the legend right of the axes) with
    ``data`` drawn by ``draw`` on its one Axes."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(), data)
    return fig


def render(draw: Callable[[Axes, T], None], data: T, path: Path,
           size: tuple[float, float] = (8.0, 4.6), dpi: int = 110) -> Path:
    """Draw ``data`` with ``draw`` on a new Agg figure and write it to ``path`` (PNG)."""
    fig = figure_for(draw, data, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
