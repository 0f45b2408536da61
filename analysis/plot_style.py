"""Styling shared by the figures of `make plots` (:mod:`analysis.plots`): colours, natural
order, compact ticks, legends outside the axes, and each run's look.

Conventions: colour = arm; within an arm, runs of different conditions (the settings a sweep
varies besides the arm, e.g. the expert count of an optimizer sweep) get their own line style
and marker, runs of different ``variant`` (e.g. the learning rate of a ``best_of`` sweep) a
lighter or darker shade; the legend names what differs and sits outside the axes, right of the
data. Conditions and arms read in natural order (4, 8, 16; 500k, 1M, 2M); log axes get 1-2-5
ticks per decade, or plain steps within one decade, in compact text. Nothing here touches
pyplot's global state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter

from analysis.points import fmt_value, sort_key

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


def arms_in_order(order: Sequence[str], *frames: pd.DataFrame) -> list[str]:
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


def legend_outside(ax: Axes, handles: Sequence[Any], labels: Sequence[str],
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


def reference_lines(ax: Axes, lines: Sequence[tuple[float, str]]) -> list[tuple[Any, str]]:
    """Horizontal reference lines (value, label), each its own grey; their legend entries."""
    return [(ax.axhline(value, color=REF_GREYS[i % len(REF_GREYS)], ls=REF_STYLE, lw=1.8), text)
            for i, (value, text) in enumerate(lines)]
