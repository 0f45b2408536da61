"""Figures draw on the Axes they are given, from small synthetic frames, and write PNGs (CPU)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis.plots import (
    FinalLosses,
    LossVsCompute,
    Multipliers,
    Traces,
    arm_colors,
    plot_final_losses,
    plot_imbalance,
    plot_loss_vs_compute,
    plot_max_logit,
    plot_multipliers,
    render,
)

ARMS = ("adamw", "muon")


def loss_vs_compute(with_fit: bool = True) -> LossVsCompute:
    rows = []
    for k, arm in enumerate(ARMS):
        for r in range(3):
            C = np.geomspace(1e12, 1e13, 5) * 2**r
            L = 2.0 + 1.5 * ((1 + k) * C / 1e12) ** -0.3
            rows += [{"run": f"{arm}{r}", "arm": arm, "flops": c, "loss": v, "used": i > 0}
                     for i, (c, v) in enumerate(zip(C, L, strict=True))]
    grid = np.geomspace(1e12, 4e13, 20)
    laws = pd.DataFrame([{"arm": arm, "flops": c, "loss": 2.0 + 1.5 * ((1 + k) * c / 1e12) ** -0.3,
                          "lo": np.nan if k else 1.99 + 1.5 * (c / 1e12) ** -0.3,
                          "hi": np.nan if k else 2.01 + 1.5 * (c / 1e12) ** -0.3}
                         for k, arm in enumerate(ARMS) for c in grid][: 40 if with_fit else 20])
    return LossVsCompute(pd.DataFrame(rows), laws, "synthetic", "arm", 2.4, ARMS)


def multipliers() -> Multipliers:
    table = pd.DataFrame({"arm": ["muon", "muon", "muonclip"], "L_star": [2.5, 2.8, 2.5],
                          "ratio": [1.5, 1.4, 1.6], "lo": [1.3, 1.2, np.nan],
                          "hi": [1.7, 1.6, np.nan]})
    return Multipliers(table, "adamw", "synthetic", ("adamw", "muon", "muonclip"))


def final_losses() -> FinalLosses:
    table = pd.DataFrame({"arm": ["heads=4", "heads=8"] * 2, "condition": ["1M", "1M", "2M", "2M"],
                          "mean": [3.1, 3.05, 2.9, 2.88], "lo": [3.08, 3.0, 2.9, 2.85],
                          "hi": [3.12, 3.07, 2.9, 2.9], "n": [2, 2, 1, 2]})
    return FinalLosses(table, "synthetic", "n_heads", ("heads=4", "heads=8"))


def traces(positive: bool = True) -> Traces:
    tokens = np.arange(1, 50) * 1000.0
    frame = pd.concat([pd.DataFrame({"run": f"{arm}{s}", "arm": arm, "tokens": tokens,
                                     "value": (1 + k) * np.sqrt(tokens) / 10 + s})
                       for k, arm in enumerate(ARMS) for s in range(2)])
    if not positive:
        frame["value"] -= 5
    return Traces(frame, ((30.0, "QK-Clip tau = 30"),), "synthetic", "arm", ARMS)


CASES: list[tuple[Callable[[Any, Any], None], Callable[[], Any]]] = [
    (plot_loss_vs_compute, loss_vs_compute),
    (plot_loss_vs_compute, lambda: loss_vs_compute(with_fit=False)),
    (plot_multipliers, multipliers),
    (plot_final_losses, final_losses),
    (plot_max_logit, traces),
    (plot_max_logit, lambda: traces(positive=False)),
    (plot_imbalance, traces),
]


@pytest.mark.parametrize(("draw", "make"), CASES)
def test_plots_draw_on_the_given_axes(draw: Callable[[Any, Any], None],
                                      make: Callable[[], Any]) -> None:
    fig = Figure()
    ax, other = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    draw(ax, make())
    assert ax.has_data() and not other.has_data()
    assert ax.get_title() == "synthetic" and ax.get_legend() is not None


@pytest.mark.parametrize(("draw", "make"), CASES)
def test_render_writes_a_png(tmp_path: Path, draw: Callable[[Any, Any], None],
                             make: Callable[[], Any]) -> None:
    path = render(draw, make(), tmp_path / "sub" / "figure.png")
    head = path.read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_colours_follow_the_arm_order_in_every_figure() -> None:
    fig = Figure()
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    data = loss_vs_compute()
    plot_loss_vs_compute(ax1, data)
    flipped = pd.concat([data.points[data.points["arm"] == "muon"],
                         data.points[data.points["arm"] == "adamw"]])
    plot_loss_vs_compute(ax2, LossVsCompute(flipped, data.laws.iloc[::-1], arms=ARMS))
    colours = arm_colors(ARMS)
    for ax in (ax1, ax2):
        handles, labels = ax.get_legend_handles_labels()
        by_label = dict(zip(labels, handles, strict=True))
        for arm in ARMS:
            assert matplotlib.colors.same_color(by_label[arm].get_color(), colours[arm])


def test_the_figure_modules_never_import_pyplot() -> None:
    code = ("import sys; import analysis.report, analysis.plots, analysis.studies; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
