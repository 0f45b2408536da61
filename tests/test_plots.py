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
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from analysis.plot_style import arm_colors, natural_order
from analysis.plots import (
    FinalLosses,
    LossVsCompute,
    Multipliers,
    Traces,
    figure_for,
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


def drawn(draw: Callable[[Any, Any], None], data: Any) -> tuple[Figure, Axes]:
    """The figure :func:`render` would write, laid out and drawn (so extents are final)."""
    fig = figure_for(draw, data)
    fig.canvas.draw()
    return fig, fig.axes[0]


def shown_labels(axis: Axis) -> list[Text]:
    """Tick labels (major and minor) that are visible, non-empty and inside the view."""
    lo, hi = sorted(axis.get_view_interval())
    index = 0 if axis.axis_name == "x" else 1
    return [t for t in axis.get_ticklabels(which="both")
            if t.get_visible() and t.get_text().strip()
            and lo * (1 - 1e-9) <= t.get_position()[index] <= hi * (1 + 1e-9)]


def overlapping(texts: list[Text], fig: Figure) -> list[tuple[str, str]]:
    """Pairs of texts whose rendered boxes intersect."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if box_a.overlaps(box_b)]


def test_natural_order_reads_numbers_and_size_suffixes() -> None:
    assert natural_order(["16", "32", "4", "8"]) == ["4", "8", "16", "32"]
    assert natural_order(["tokens=1M", "tokens=2M", "tokens=4M", "tokens=500k"]) == [
        "tokens=500k", "tokens=1M", "tokens=2M", "tokens=4M"]
    assert natural_order(["qk_clip_tau=none", "qk_clip_tau=100", "qk_clip_tau=30"]) == [
        "qk_clip_tau=30", "qk_clip_tau=100", "qk_clip_tau=none"]
    assert natural_order(["sparsity 16", "sparsity 2", "lr=0.1", "lr=0.02"]) == [
        "lr=0.02", "lr=0.1", "sparsity 2", "sparsity 16"]


def bars(conditions: list[str], arms: tuple[str, ...] = ("E=16", "E=4")) -> FinalLosses:
    rows = [{"arm": arm, "condition": c, "mean": 3.0 - 0.1 * i - 0.01 * k, "lo": np.nan,
             "hi": np.nan, "n": 1}
            for i, c in enumerate(conditions) for k, arm in enumerate(arms)]
    return FinalLosses(pd.DataFrame(rows), "synthetic", "arm")


def test_bar_conditions_come_in_numeric_order_and_do_not_overlap() -> None:
    fig, ax = drawn(plot_final_losses, bars(["tokens=16", "tokens=32", "tokens=4", "tokens=8"]))
    assert [t.get_text() for t in shown_labels(ax.xaxis)] == [
        "tokens=4", "tokens=8", "tokens=16", "tokens=32"]
    # arms not in the given order follow naturally too: E=4 is drawn (and keyed) before E=16
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["E=4", "E=16"]
    long = [f"d_model={d}, n_layers={n}, expert_ffn_dim={d}, dense_ffn_dim={3 * d}, tokens={t}"
            for d, n, t in ((96, 5, "2M"), (48, 3, "500k"), (64, 4, "1M"))]
    many = [f"tokens={k}k" for k in range(100, 2100, 100)]
    for conditions in (long, many):
        fig, ax = drawn(plot_final_losses, bars(conditions))
        labels = shown_labels(ax.xaxis)
        assert len(labels) >= 3 and not overlapping(labels, fig)
    assert shown_labels(drawn(plot_final_losses, bars(long))[1].xaxis)[0].get_text().startswith(
        "d_model=48")


def losses(low: float, high: float) -> LossVsCompute:
    C = np.geomspace(1e10, 1.2e11, 8)
    L = low + (high - low) * (C / C[0]) ** -1.0
    points = pd.DataFrame({"run": "r", "arm": "adamw", "flops": C, "loss": L, "used": True})
    return LossVsCompute(points, pd.DataFrame(columns=["arm", "flops", "loss"]), "synthetic")


@pytest.mark.parametrize(("low", "high"), [(2.4, 4.0), (1.15, 2.6), (2.45, 2.6), (1.2, 9.0),
                                           (0.9, 30.0)])
def test_a_log_loss_axis_has_at_least_three_readable_labels(low: float, high: float) -> None:
    fig, ax = drawn(plot_loss_vs_compute, losses(low, high))
    assert ax.get_yscale() == "log"
    labels = shown_labels(ax.yaxis)
    assert len(labels) >= 3, [t.get_text() for t in labels]
    assert not overlapping(labels, fig)
    assert all(len(t.get_text()) <= 5 and "times" not in t.get_text() for t in labels)
    x = shown_labels(ax.xaxis)
    assert len(x) >= 2 and not overlapping(x, fig)


def test_a_wide_log_logit_axis_is_labelled_sparsely() -> None:
    frame = pd.DataFrame({"run": "r", "arm": "muon", "tokens": np.arange(1, 60) * 1e4,
                          "value": np.geomspace(0.1, 5000, 59)})
    fig, ax = drawn(plot_max_logit, Traces(frame, ((100.0, "QK-Clip tau = 100"),), "synthetic"))
    labels = shown_labels(ax.yaxis)
    assert 4 <= len(labels) <= 10 and not overlapping(labels, fig)
    tokens = [t.get_text() for t in shown_labels(ax.xaxis)]
    assert "500k" in tokens and all(t == "0" or t[-1] in "kM" for t in tokens), tokens
    assert ax.xaxis.get_offset_text().get_text() == ""  # no "1e6" in the corner


def with_conditions(data: Any) -> Any:
    """The same figure data with runs of two expert counts per arm (condition column)."""
    if isinstance(data, Traces):
        frame = data.frame.assign(condition=[f"n_routed_experts={4 if r.endswith('0') else 8}"
                                             for r in data.frame["run"]])
        return Traces(frame, data.lines, data.title, data.legend_title, data.arms)
    if isinstance(data, LossVsCompute):
        points = data.points.assign(condition=[
            f"n_routed_experts={4 if r.endswith('0') else 8}" for r in data.points["run"]])
        return LossVsCompute(points, data.laws, data.title, data.legend_title, data.L_star,
                             data.arms)
    return data


@pytest.mark.parametrize(("draw", "make"), CASES)
def test_the_legend_sits_outside_the_data(draw: Callable[[Any, Any], None],
                                          make: Callable[[], Any]) -> None:
    fig, ax = drawn(draw, with_conditions(make()))
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    legend = ax.get_legend().get_window_extent(renderer)
    data_boxes = [a.get_window_extent(renderer) for a in [*ax.lines, *ax.collections,
                                                           *ax.patches]]
    data_box = Bbox.union([b for b in data_boxes if b.width > 0 or b.height > 0])
    assert not legend.overlaps(ax.get_window_extent(renderer))
    assert not legend.overlaps(data_box)
    assert fig.bbox.contains(legend.x1 - 1, legend.y0 + 1)  # and inside the image


def line_look(ax: Axes, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    """(colour, line style) of the line drawn through exactly these points."""
    for line in ax.lines:
        if np.array_equal(line.get_xdata(), x) and np.allclose(line.get_ydata(), y):
            return matplotlib.colors.to_hex(line.get_color()), line.get_linestyle()
    raise AssertionError("no such line")


def test_runs_of_two_expert_counts_in_one_arm_look_different_and_are_named() -> None:
    data = with_conditions(traces())
    _, ax = drawn(plot_max_logit, data)
    runs = {r: g.sort_values("tokens") for r, g in data.frame.groupby("run")}
    looks = {r: line_look(ax, g["tokens"].to_numpy(), g["value"].to_numpy())
             for r, g in runs.items()}
    assert looks["adamw0"] != looks["adamw1"] and looks["muon0"] != looks["muon1"]
    assert looks["adamw0"][0] != looks["muon0"][0]  # colour still tells the arms apart
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    for name in ("adamw, n_routed_experts=4", "adamw, n_routed_experts=8",
                 "muon, n_routed_experts=4", "muon, n_routed_experts=8"):
        assert name in texts
    curves = with_conditions(loss_vs_compute())
    _, ax = drawn(plot_loss_vs_compute, curves)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "adamw, n_routed_experts=4" in texts and "muon, n_routed_experts=8" in texts
    two = curves.points[curves.points["run"].isin(["adamw0", "adamw1"])]
    looks = {r: line_look(ax, g["flops"].to_numpy(), g["loss"].to_numpy())
             for r, g in two.groupby("run")}
    assert looks["adamw0"] != looks["adamw1"]


def test_many_variants_get_shades_and_a_key_per_setting() -> None:
    tokens = np.arange(1, 20) * 1000.0
    frame = pd.concat([pd.DataFrame({"run": f"{arm}-{c}-{lr}", "arm": arm,
                                     "condition": f"tokens={c}", "variant": f"lr={lr}",
                                     "tokens": tokens, "value": 1 + k + j + lr * tokens / 1e4})
                       for k, arm in enumerate(ARMS) for j, c in enumerate(("1M", "500k"))
                       for lr in (0.01, 0.02, 0.04)])
    _, ax = drawn(plot_max_logit, Traces(frame, (), "synthetic", "arm", ARMS))
    colours = {matplotlib.colors.to_hex(line.get_color()) for line in ax.lines}
    assert len(colours) == 2 * 3  # a shade per lr within each arm
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[:2] == list(ARMS) and texts[2:4] == ["tokens=500k", "tokens=1M"]
    assert any("lr" in t for t in texts[4:])


def test_multiplier_series_pair_each_arms_kth_target_loss() -> None:
    table = pd.DataFrame({"arm": ["E=16"] * 3 + ["E=4"] * 3, "L_star": [1.28, 1.56, 1.85,
                                                                        1.28, 1.56, 1.84],
                          "ratio": [1.0, 1.1, 1.2, 0.9, 1.0, 1.1], "lo": 0.8, "hi": 1.3})
    _, ax = drawn(plot_multipliers, Multipliers(table, "E=2", "synthetic"))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "L* = 1.28", "L* = 1.56", "L* = 1.84-1.85", "baseline: E=2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["E=4", "E=16"]
    nan = Multipliers(table.assign(L_star=np.nan).iloc[:1], "E=2", "synthetic")
    _, ax = drawn(plot_multipliers, nan)
    assert "any L*" in [t.get_text() for t in ax.get_legend().get_texts()]
