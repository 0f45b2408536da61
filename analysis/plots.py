"""Figures of `make plots`: drawing functions ``plot_x(ax, data)`` on an Axes the caller owns.

Each function draws one panel from a small frozen record of tidy frames and never touches
pyplot's global state (no ``plt.gca()``, no ``plt.figure()``; STYLE.md item 8). :func:`render`
makes a standalone figure on the Agg canvas and writes it as PNG, so nothing here needs a display
or imports ``matplotlib.pyplot``.

- :func:`plot_loss_vs_compute`: loss against training FLOPs per arm (log-log) with fitted laws
  L = E + A C^-alpha and their 95% bootstrap bands (Hoffmann et al. 2022; Kimi K2 report,
  arXiv 2507.20534, section 2.3 for the sparsity law).
- :func:`plot_multipliers`: compute multipliers C_baseline(L*) / C_arm(L*) with 95% intervals.
- :func:`plot_final_losses`: final val loss per arm and condition (ablation bars, spread as
  error bars).
- :func:`plot_max_logit`, :func:`plot_imbalance`: a metric over training per run (max attention
  logit with the QK-Clip threshold, K2 report Algorithm 1; expert-load imbalance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

T = TypeVar("T")
LINE_STYLES = ("-", "--", ":", "-.")
FLOPS_LABEL = "training FLOPs (model-specific count)"


def arm_colors(arms: Sequence[str]) -> dict[str, Any]:
    """One colour per arm, in the given order (tab10, then tab20 beyond ten arms)."""
    cmap = colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: cmap(i % cmap.N) for i, arm in enumerate(arms)}


def _arms(order: Sequence[str], *frames: pd.DataFrame) -> list[str]:
    """Arm labels: ``order`` first, then any others in order of first appearance in frames."""
    seen: dict[str, None] = dict.fromkeys(order)
    for frame in frames:
        if "arm" in frame.columns:
            seen.update(dict.fromkeys(str(a) for a in frame["arm"]))
    return list(seen)


@dataclass(frozen=True)
class LossVsCompute:
    """Loss against compute for :func:`plot_loss_vs_compute`.

    ``points``: columns ``run``, ``arm``, ``flops``, ``loss``, ``used`` (bool: the point went into
    the fit); every run is drawn as a faint line through its points, used points as markers.
    ``laws``: columns ``arm``, ``flops``, ``loss`` (the fitted law) and optionally ``lo``, ``hi``
    (95% band; NaN where there is none). ``L_star``: a target loss to mark (None: none).
    ``arms``: arm order (and so colours); arms not listed follow in order of appearance.
    """

    points: pd.DataFrame
    laws: pd.DataFrame
    title: str = ""
    legend_title: str = "arm"
    L_star: float | None = None
    arms: tuple[str, ...] = ()


def _plain_log_ticks(ax: Axes, values: pd.Series) -> None:
    """Label a log y axis 3, 4, 5 rather than 3x10^0: every minor tick within one decade,
    else the 2s and 5s of each decade."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    v = v[np.isfinite(v) & (v > 0)]
    narrow = bool(len(v)) and v.max() < 10 * v.min()

    def minor(x: float, _pos: int | None) -> str:
        mantissa = round(x / 10 ** np.floor(np.log10(x)), 6) if x > 0 else 0.0
        return f"{x:.3g}" if narrow or mantissa in (2.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def plot_loss_vs_compute(ax: Axes, data: LossVsCompute) -> None:
    """Log-log loss vs FLOPs per arm: run curves, fit points, fitted laws and bands."""
    colors = arm_colors(_arms(data.arms, data.points, data.laws))
    for (arm, _run), run in data.points.groupby(["arm", "run"], sort=False):
        run = run.sort_values("flops")
        color = colors[str(arm)]
        ax.plot(run["flops"], run["loss"], color=color, alpha=0.25, lw=0.8)
        used = run[run["used"].astype(bool)]
        ax.scatter(used["flops"], used["loss"], color=color, s=14, zorder=3)
    for arm, law in data.laws.groupby("arm", sort=False):
        law = law.sort_values("flops")
        color = colors[str(arm)]
        ax.plot(law["flops"], law["loss"], color=color, lw=1.8, label=str(arm))
        if {"lo", "hi"} <= set(law.columns) and law[["lo", "hi"]].notna().all(axis=None):
            ax.fill_between(law["flops"], law["lo"], law["hi"], color=color, alpha=0.2, lw=0)
    fitted = set(data.laws["arm"].astype(str)) if "arm" in data.laws.columns else set()
    for arm in colors:
        if arm not in fitted:
            ax.scatter([], [], color=colors[arm], s=14, label=f"{arm} (no fit)")
    if data.L_star is not None:
        ax.axhline(data.L_star, color="0.3", ls="--", lw=1, label=f"L* = {data.L_star:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    shown = [data.points["loss"], *([data.laws["loss"]] if "loss" in data.laws.columns else [])]
    _plain_log_ticks(ax, pd.concat(shown))
    ax.set_xlabel(FLOPS_LABEL)
    ax.set_ylabel("validation loss")
    ax.set_title(data.title)
    if colors:
        ax.legend(title=data.legend_title, fontsize="small")
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


def plot_multipliers(ax: Axes, data: Multipliers) -> None:
    """Multiplier per arm with error bars, one series per target loss L*; 1 = the baseline."""
    arms = [a for a in _arms(data.arms, data.table) if a in set(data.table["arm"].astype(str))]
    x = {arm: i for i, arm in enumerate(arms)}
    stars = list(pd.unique(data.table["L_star"])) if len(data.table) else []
    width = 0.6 / max(1, len(stars))
    for j, star in enumerate(stars):
        rows = data.table[data.table["L_star"] == star]
        pos = np.array([x[str(a)] for a in rows["arm"]]) + (j - (len(stars) - 1) / 2) * width
        ratio = rows["ratio"].to_numpy(float)
        err = np.vstack([ratio - rows["lo"].to_numpy(float), rows["hi"].to_numpy(float) - ratio])
        err = np.where(np.isfinite(err), np.maximum(err, 0.0), 0.0)
        label = f"L* = {star:.3g}" if np.isfinite(star) else "any L*"
        ax.errorbar(pos, ratio, yerr=err, fmt="o", capsize=3, label=label)
    ax.axhline(1.0, color="0.3", ls="--", lw=1, label=f"baseline: {data.baseline}")
    ax.set_xticks(range(len(arms)), arms)
    ax.set_xlim(-0.5, len(arms) - 0.5)
    ax.set_ylabel(f"FLOPs of {data.baseline} / FLOPs of arm at equal loss")
    ax.set_title(data.title)
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.2)


@dataclass(frozen=True)
class FinalLosses:
    """Final val loss per arm and condition for :func:`plot_final_losses`.

    ``table``: columns ``arm``, ``condition`` (what the bars are grouped by: budget and other
    settings held equal), ``mean``, ``lo``, ``hi`` (spread over seeds, or NaN), ``n`` (runs).
    """

    table: pd.DataFrame
    title: str = ""
    legend_title: str = "arm"
    arms: tuple[str, ...] = ()


def plot_final_losses(ax: Axes, data: FinalLosses) -> None:
    """Grouped bars: one group per condition, one bar per arm, min-max spread as error bars."""
    colors = arm_colors(_arms(data.arms, data.table))
    arms = [a for a in colors if a in set(data.table["arm"].astype(str))]
    conditions = list(pd.unique(data.table["condition"].astype(str)))
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
    ax.set_xticks(range(len(conditions)), conditions, rotation=20 if len(conditions) > 4 else 0)
    ax.set_ylabel("final validation loss (axis does not start at 0)")
    ax.set_title(data.title)
    if arms:
        ax.legend(title=data.legend_title, fontsize="small")
    ax.grid(True, axis="y", alpha=0.2)


@dataclass(frozen=True)
class Traces:
    """One metric over training per run for :func:`plot_max_logit` / :func:`plot_imbalance`.

    ``frame``: columns ``run``, ``arm``, ``tokens``, ``value`` and optionally ``condition``
    (one line style per condition when there are several). ``lines``: horizontal reference
    lines (value, label), e.g. the QK-Clip threshold tau.
    """

    frame: pd.DataFrame
    lines: tuple[tuple[float, str], ...] = ()
    title: str = ""
    legend_title: str = "arm"
    arms: tuple[str, ...] = ()


def _plot_traces(ax: Axes, data: Traces, ylabel: str, log_y: bool) -> None:
    colors = arm_colors(_arms(data.arms, data.frame))
    conditions = (list(pd.unique(data.frame["condition"].astype(str)))
                  if "condition" in data.frame.columns else [])
    styles = {c: LINE_STYLES[i % len(LINE_STYLES)] for i, c in enumerate(conditions)}
    labelled: set[str] = set()
    for (arm, _run), run in data.frame.groupby(["arm", "run"], sort=False):
        run = run.sort_values("tokens")
        label = None if str(arm) in labelled else str(arm)
        labelled.add(str(arm))
        style = styles.get(str(run["condition"].iloc[0]), "-") if styles else "-"
        ax.plot(run["tokens"], run["value"], color=colors[str(arm)], lw=1.2, alpha=0.8,
                ls=style, label=label)
    if len(styles) > 1:
        for condition, style in styles.items():
            ax.plot([], [], color="0.4", ls=style, label=condition)
    for value, text in data.lines:
        ax.axhline(value, color="0.2", ls=":", lw=1.2, label=text)
    if log_y and len(data.frame) and (data.frame["value"] > 0).all():
        ax.set_yscale("log")
        _plain_log_ticks(ax, data.frame["value"])
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(data.title)
    if colors or data.lines:
        ax.legend(title=data.legend_title, fontsize="small")
    ax.grid(True, alpha=0.2)


def plot_max_logit(ax: Axes, data: Traces) -> None:
    """Max pre-softmax attention logit over training (max over layers, heads and the batch)."""
    _plot_traces(ax, data, "max attention logit", log_y=True)


def plot_imbalance(ax: Axes, data: Traces) -> None:
    """Expert-load imbalance (max / mean load over experts, mean over MoE layers) over training."""
    _plot_traces(ax, data, "expert-load imbalance (max / mean load)", log_y=False)


def render(draw: Callable[[Axes, T], None], data: T, path: Path,
           size: tuple[float, float] = (6.4, 4.4), dpi: int = 110) -> Path:
    """Draw ``data`` with ``draw`` on a new Agg figure and write it to ``path`` (PNG)."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(), data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
