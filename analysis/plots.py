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

Conventions shared by every figure: colour = arm; within an arm, runs of different conditions
(the settings a sweep varies besides the arm, e.g. the expert count of an optimizer sweep) get
their own line style and marker, runs of different ``variant`` (e.g. the learning rate of a
``best_of`` sweep) a lighter or darker shade; the legend names what differs and sits outside the
axes, right of the data. Conditions and arms read in natural order (4, 8, 16; 500k, 1M, 2M);
log axes get 1-2-5 ticks per decade, or plain steps within one decade, in compact text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter

from analysis.points import fmt_value, sort_key

T = TypeVar("T")
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
FLOPS_LABEL = "training FLOPs (model-specific count)"
COMBINED_KEYS = 8
"""Up to this many (arm, condition, variant) combinations get one legend entry each; beyond,
the legend keys colour (arm), line style (condition) and shade (variant) separately."""
LEGEND_WIDTH = 30
"""Legend labels wrap at ``, `` beyond this many characters."""
TICK_WIDTH = 18
"""Category tick labels wrap at ``, `` beyond this many characters."""
CHAR_IN = 0.075
LINE_IN = 0.17
"""Rough width of a tick-label character and height of a line of it, inches (10 pt)."""
REF_GREYS = ("0.1", "0.5", "0.3", "0.65")
REF_STYLE = (0, (1.0, 1.2))
"""Colours and dash pattern (thick dense dots, unlike any run's line style) of horizontal
reference lines such as the QK-Clip thresholds."""


def arm_colors(arms: Sequence[str]) -> dict[str, Any]:
    """One colour per arm, in the given order (tab10, then tab20 beyond ten arms)."""
    cmap = colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: cmap(i % cmap.N) for i, arm in enumerate(arms)}


_NUMBER = re.compile(r"(.*?)([-+]?\d*\.?\d+(?:e[-+]?\d+)?)([kMG]?)", re.DOTALL)
_TEXT = re.compile(r"(.*[= ]|)(.*)", re.DOTALL)
_SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def natural_key(label: Any) -> tuple[tuple[str, tuple[int, float, str]], ...]:
    """Sort key of a label such as ``tokens=500k, lr=0.01`` or ``sparsity 8``: part by part
    (split at ``, ``), the text before a trailing number, then the number itself (``k``, ``M``,
    ``G`` read as 1e3, 1e6, 1e9), so 4 < 8 < 16 and 500k < 1M; a text value (``none``) after the
    numbers of the same name."""
    key = []
    for part in str(label).split(", "):
        m = _NUMBER.fullmatch(part)
        if m is not None:
            key.append((m.group(1), sort_key(float(m.group(2)) * _SCALE[m.group(3)])))
            continue
        text = _TEXT.fullmatch(part)
        name, value = text.groups() if text is not None else ("", part)
        key.append((name, sort_key(value)))
    return tuple(key)


def natural_order(values: Iterable[Any]) -> list[str]:
    """Distinct values as text, in :func:`natural_key` order."""
    return sorted(dict.fromkeys(str(v) for v in values), key=natural_key)


def _arms(order: Sequence[str], *frames: pd.DataFrame) -> list[str]:
    """Arm labels: ``order`` first, then any others in the frames in natural order."""
    seen: dict[str, None] = dict.fromkeys(order)
    extra = [str(a) for frame in frames if "arm" in frame.columns for a in frame["arm"]]
    seen.update(dict.fromkeys(a for a in natural_order(extra) if a not in seen))
    return list(seen)


def wrap(text: str, width: int) -> str:
    """Break ``a=1, b=2, c=3`` into lines of at most ``width`` characters at ``, ``."""
    lines: list[str] = []
    for part in str(text).split(", "):
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += f", {part}"
        else:
            lines.append(part)
    return "\n".join(lines)


def compact(x: float) -> str:
    """Tick text: ``2.5``, ``0.002``, ``5000``, ``2e10``."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else ""
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.5g}"
    mantissa, exponent = f"{x:.2g}".split("e")
    return f"{mantissa}e{int(exponent)}"


class ReadableLogLocator(Locator):
    """Major ticks of a log axis that all carry a label and never crowd: plain steps (2.5, 3,
    3.5) within one decade; 1-2-5 per decade up to 2.5 decades; 1-3 up to 4; powers of ten."""

    def __call__(self) -> Sequence[float]:
        assert self.axis is not None
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def nonsingular(self, vmin: float, vmax: float) -> tuple[float, float]:
        return LogLocator().nonsingular(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        vmin, vmax = sorted((float(vmin), float(vmax)))
        if not (vmin > 0 and math.isfinite(vmax)):
            return LogLocator().tick_values(max(vmin, 1e-300), max(vmax, 1e-300))
        decades = math.log10(vmax / vmin)
        if decades < 1:
            ticks = _plain_steps(vmin, vmax)
        else:
            subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0, 3.0) if decades <= 4 else (1.0,)
            ticks = LogLocator(base=10, subs=subs).tick_values(vmin, vmax)
        ticks = np.asarray(ticks, float)
        inside = (ticks > 0) & (ticks >= vmin * (1 - 1e-9)) & (ticks <= vmax * (1 + 1e-9))
        return list(ticks[inside])


def _plain_steps(vmin: float, vmax: float, min_gap: float = 1 / 16) -> np.ndarray:
    """Linear steps (1, 2, 2.5 or 5 x 10^k) on a log axis spanning less than a decade: the
    coarsest that shows at least 4 ticks, none closer than ``min_gap`` of the axis (log space)."""
    span = math.log10(vmax / vmin)
    fallback = None
    for nbins in range(4, 10):
        ticks = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
        shown = ticks[(ticks >= vmin) & (ticks <= vmax) & (ticks > 0)]
        if len(shown) >= 2 and np.diff(np.log10(shown)).min() < min_gap * span:
            break
        fallback = ticks
        if len(shown) >= 4:
            return ticks
    return fallback if fallback is not None else ticks


def readable_log_axis(axis: Axis) -> None:
    """Set ``axis`` (already log scale) to :class:`ReadableLogLocator` labelled with
    :func:`compact`; minor ticks stay as unlabelled marks."""
    axis.set_major_locator(ReadableLogLocator())
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: compact(x)))
    axis.set_minor_formatter(NullFormatter())


def _legend_outside(ax: Axes, handles: Sequence[Any], labels: Sequence[str],
                    title: str | None = None) -> None:
    """A legend right of the axes (outside the data), labels wrapped to ``LEGEND_WIDTH``."""
    if not handles:
        return
    ax.legend(handles, [wrap(t, LEGEND_WIDTH) for t in labels], title=title,
              fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def category_ticks(ax: Axes, labels: Sequence[str]) -> None:
    """Label x positions 0..n-1 with ``labels`` so that they never overlap: wrapped at ``, ``,
    turned 30 or 90 degrees when too wide for their slot, thinned when even that is too tight."""
    n = len(labels)
    wrapped = [wrap(t, TICK_WIDTH) for t in labels]
    ax.set_xticks(range(n), wrapped)
    if n < 2:
        return
    lines = [t.split("\n") for t in wrapped]
    chars = max(len(line) for ls in lines for line in ls)
    height = max(len(ls) for ls in lines) * LINE_IN
    width = ax.figure.get_figwidth() * ax.get_position().width * 0.85  # the legend's share
    slot = width / n
    if chars * CHAR_IN <= 0.9 * slot:
        return
    angle = 30 if height <= 0.5 * slot else 90
    step = max(1, math.ceil(height / (slot if angle == 90 else 0.5 * slot)))
    for i, tick in enumerate(ax.get_xticklabels()):
        tick.set_rotation(angle)
        tick.set_horizontalalignment("right" if angle == 30 else "center")
        tick.set_rotation_mode("anchor" if angle == 30 else "default")
        tick.set_visible(i % step == 0)


def tokens_axis(axis: Axis) -> None:
    """Label a linear tokens axis ``0, 250k, 500k, 1M`` rather than with a 1e6 offset."""
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_value(float(x))))


@dataclass(frozen=True)
class Look:
    """How one run is drawn and what its legend entry names."""

    arm: str
    condition: str
    variant: str
    color: Any
    ls: str
    marker: str


def _lighten(color: Any, amount: float) -> tuple[float, float, float]:
    """``color`` mixed with white: 0 = unchanged, 1 = white."""
    return tuple(c + (1 - c) * amount for c in to_rgb(color))  # type: ignore[return-value]


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A text column of ``frame`` ('' where missing or NaN)."""
    if name not in frame.columns:
        return pd.Series("", index=frame.index)
    return frame[name].astype(object).where(frame[name].notna(), "").astype(str)


def run_looks(frame: pd.DataFrame, colors: dict[str, Any]) -> dict[str, Look]:
    """Colour by arm, line style and marker by ``condition``, shade by ``variant`` (lightest =
    first in natural order, within each arm) for every ``run`` of ``frame``."""
    frame = frame.assign(condition=_column(frame, "condition"), variant=_column(frame, "variant"))
    conditions = natural_order(frame["condition"])
    style = {c: LINE_STYLES[i % len(LINE_STYLES)] for i, c in enumerate(conditions)}
    marker = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(conditions)}
    looks: dict[str, Look] = {}
    for arm, g in frame.groupby("arm", sort=False):
        variants = natural_order(g["variant"])
        for run, r in g.groupby("run", sort=False):
            cond, var = str(r["condition"].iloc[0]), str(r["variant"].iloc[0])
            j = variants.index(var)
            shade = 0.6 * (1 - j / (len(variants) - 1)) if len(variants) > 1 else 0.0
            looks[str(run)] = Look(str(arm), cond, var, _lighten(colors[str(arm)], shade),
                                   style[cond], marker[cond])
    return looks


def _proxy(color: Any, look: Look, markers: bool) -> Line2D:
    """A legend handle drawn like ``look`` (its marker only when ``markers``)."""
    mk: dict[str, Any] = {"marker": look.marker, "markersize": 4} if markers else {}
    return Line2D([], [], color=color, ls=look.ls, lw=1.2, **mk)


def run_key(looks: Iterable[Look], colors: dict[str, Any], arm_entries: bool,
            markers: bool = False) -> list[tuple[Line2D, str]]:
    """Legend entries (proxy handle, label) naming what differs between runs: one per (arm,
    condition, variant) when there are at most ``COMBINED_KEYS``, e.g. ``adamw,
    n_routed_experts=4``; else arms (colour), conditions (grey, line style) and a note on the
    shade. ``arm_entries``: include plain arm entries (False when arms have entries already);
    ``markers``: the handles show the condition's marker too."""
    rank = {a: i for i, a in enumerate(colors)}
    first: dict[tuple[str, str, str], Look] = {}
    for look in looks:
        first.setdefault((look.arm, look.condition, look.variant), look)
    combos = sorted(first, key=lambda k: (rank.get(k[0], len(rank)), natural_key(k[1]),
                                          natural_key(k[2])))
    conditions = natural_order(k[1] for k in combos)
    variants = natural_order(k[2] for k in combos)
    arms = [(Line2D([], [], color=colors[a], lw=1.8), a) for a in colors
            if any(k[0] == a for k in combos)] if arm_entries else []
    if len(conditions) < 2 and len(variants) < 2:
        return arms
    if len(combos) <= COMBINED_KEYS:
        return [(_proxy(first[k].color, first[k], markers),
                 ", ".join([k[0], *([k[1]] if len(conditions) > 1 else []),
                            *([k[2]] if len(variants) > 1 else [])]))
                for k in combos]
    by_condition = {k[1]: first[k] for k in reversed(combos)}
    keys = [(_proxy("0.35", by_condition[c], markers), c)
            for c in (conditions if len(conditions) > 1 else [])]
    if len(variants) > 1:
        name = next(v for v in variants if v).split("=")[0]
        keys.append((Line2D([], [], color="none"), f"lighter shade: smaller {name}"))
    return arms + keys


def _reference_lines(ax: Axes, lines: Sequence[tuple[float, str]]) -> list[tuple[Any, str]]:
    """Horizontal reference lines (value, label), each its own grey; their legend entries."""
    return [(ax.axhline(value, color=REF_GREYS[i % len(REF_GREYS)], ls=REF_STYLE, lw=1.8), text)
            for i, (value, text) in enumerate(lines)]


@dataclass(frozen=True)
class LossVsCompute:
    """Loss against compute for :func:`plot_loss_vs_compute`.

    ``points``: columns ``run``, ``arm``, ``flops``, ``loss``, ``used`` (bool: the point went into
    the fit) and optionally ``condition``, ``variant`` (what else differs between runs, module
    docstring); every run is drawn as a faint line through its points, used points as markers.
    ``laws``: columns ``arm``, ``flops``, ``loss`` (the fitted law) and optionally ``lo``, ``hi``
    (95% band; NaN where there is none). ``L_star``: a target loss to mark (None: none).
    ``arms``: arm order (and so colours); arms not listed follow in natural order.
    """

    points: pd.DataFrame
    laws: pd.DataFrame
    title: str = ""
    legend_title: str = "arm"
    L_star: float | None = None
    arms: tuple[str, ...] = ()


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
    colors = arm_colors(_arms(data.arms, data.points, data.laws))
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
    ax.set_ylabel("validation loss")
    ax.set_title(data.title)
    _legend_outside(ax, [e[0] for e in entries], [e[1] for e in entries], data.legend_title)
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
    arms = [a for a in _arms(data.arms, data.table) if a in set(data.table["arm"].astype(str))]
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
    _legend_outside(ax, [e[0] for e in entries], [e[1] for e in entries])
    ax.grid(True, axis="y", alpha=0.2)


@dataclass(frozen=True)
class FinalLosses:
    """Final val loss per arm and condition for :func:`plot_final_losses`.

    ``table``: columns ``arm``, ``condition`` (what the bars are grouped by: budget and other
    settings held equal; groups in natural order, 500k before 1M), ``mean``, ``lo``, ``hi``
    (spread over seeds, or NaN), ``n`` (runs).
    """

    table: pd.DataFrame
    title: str = ""
    legend_title: str = "arm"
    arms: tuple[str, ...] = ()


def plot_final_losses(ax: Axes, data: FinalLosses) -> None:
    """Grouped bars: one group per condition, one bar per arm, min-max spread as error bars."""
    colors = arm_colors(_arms(data.arms, data.table))
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
    ax.set_ylabel("final validation loss (axis does not start at 0)")
    ax.set_title(data.title)
    handles, labels = ax.get_legend_handles_labels()
    _legend_outside(ax, handles, labels, data.legend_title)
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
    colors = arm_colors(_arms(data.arms, data.frame))
    looks = run_looks(data.frame, colors)
    for run, g in data.frame.groupby("run", sort=False):
        look = looks[str(run)]
        g = g.sort_values("tokens")
        ax.plot(g["tokens"], g["value"], color=look.color, ls=look.ls, lw=1.2, alpha=0.9)
    entries = [*run_key(looks.values(), colors, arm_entries=True),
               *_reference_lines(ax, data.lines)]
    if log_y and len(data.frame) and (data.frame["value"] > 0).all():
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
    tokens_axis(ax.xaxis)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(data.title)
    _legend_outside(ax, [e[0] for e in entries], [e[1] for e in entries], data.legend_title)
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
