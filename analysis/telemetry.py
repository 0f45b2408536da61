"""Training dynamics of a sweep: max attention logits (QK-Clip) and expert-load imbalance.

- Max logit (``attn/max_logit``): S_max = max_{i,j} q_i . k_j / sqrt(d) over layers, heads and
  the batch of each logging window. MuonClip rescales W_q, W_k of every head with
  S_max > tau after the step (Kimi K2 report, arXiv 2507.20534, Algorithm 1), so the logged
  (pre-clip) value can exceed tau by one step's growth before it is pulled back.
- Imbalance (``moe/imbalance``): max / mean expert load per MoE layer, averaged over layers;
  1 = perfectly balanced (aux-loss-free bias balancing, DeepSeek-V3 report section 2.1.2).

- Routing health (:func:`routing_health_table`): per run, the rule of :mod:`harness.routing`
  (collapsed = dead experts at the end, never balanced, or ended unbalanced), read from the logged
  curves, so runs of any harness version are judged alike.

Each summary covers every run that logged the metric, whatever its status: a diverged run is the
point of a max-logit study. Nothing here fits a law; the numbers are medians and ranges over runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.plots import Traces
from analysis.points import Runs, Tuned, fmt_value, setting_text, sort_key, tuned_axes
from analysis.references import K2_CLIPPED, K2_LOGITS
from harness.routing import BALANCED, COLLAPSED, routing_health


@dataclass(frozen=True)
class TraceSummary:
    """One metric over training: a row per run (``table``), the traces to draw, and sentences
    (text, published reference or None) for the report."""

    table: pd.DataFrame
    traces: Traces
    sentences: tuple[tuple[str, str | None], ...]


COLUMNS = ["run", "arm", "condition", "variant", "tokens", "value"]


def variants(runs: Runs, best_of: Tuned) -> pd.Series:
    """Per run, its ``best_of`` setting as text (``lr=0.01``, ``lr=0.02, adamw_lr=0.01``): runs
    of one arm and condition that differ in it are drawn in different shades; '' when there is
    no such axis."""
    frame = runs.frame
    axes = [a for a in tuned_axes(best_of) if a in frame.columns]
    if not axes:
        return pd.Series("", index=frame.index)
    return pd.Series([setting_text(axes, [None if pd.isna(v) else v for v in row])
                      for row in frame[axes].itertuples(index=False)], index=frame.index)


def _traces(runs: Runs, curves: pd.DataFrame, metric: str,
            best_of: Tuned = None) -> pd.DataFrame:
    """Columns run, arm, condition, variant (:func:`variants`), tokens, value for every run
    that logged ``metric``."""
    if curves.empty or metric not in curves.columns or "tokens" not in curves.columns:
        return pd.DataFrame(columns=COLUMNS)
    meta = runs.frame[["run_id", "arm_label", "arm_value", "condition"]].assign(
        variant=variants(runs, best_of))
    pts = curves[["run_id", "tokens", metric]].dropna().merge(meta, on="run_id")
    order = sorted(pts["arm_label"].unique(),
                   key=lambda lb: sort_key(pts.loc[pts["arm_label"] == lb, "arm_value"].iloc[0]))
    pts = pts.rename(columns={"run_id": "run", "arm_label": "arm", metric: "value"})
    pts["arm"] = pd.Categorical(pts["arm"], order, ordered=True)
    pts = pts.sort_values(["arm", "run", "tokens"])
    pts["arm"] = pts["arm"].astype(str)
    return pts[COLUMNS].reset_index(drop=True)


def _cells(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """The runs of each arm, or of each arm and condition when the conditions differ by more
    than budget (e.g. two learning rates): a median across those would mix designs."""
    conditions = table.get("condition", pd.Series("", index=table.index))
    design = conditions.map(
        lambda c: ", ".join(p for p in str(c).split(", ") if not p.startswith("tokens=")))
    split = design.nunique() > 1
    for a, runs in table.groupby("arm", sort=False):
        if not split:
            yield str(a), runs
            continue
        for c, g in runs.groupby(design[runs.index]):
            yield f"{a} at {c}", g


def _by_arm(table: pd.DataFrame, column: str, digits: int = 3) -> str:
    """``adamw 12.3 (10.1-14.2), muon 45.1`` : median over an arm's runs and its range (per
    condition where :func:`_cells` splits them)."""
    parts = []
    for arm, g in _cells(table):
        v = g[column].dropna()
        if v.empty:
            continue
        text = f"{arm} {v.median():.{digits}g}"
        if len(v) > 1:
            text += f" ({v.min():.{digits}g}-{v.max():.{digits}g})"
        parts.append(text)
    return ", ".join(parts)


def _over(table: pd.DataFrame, best_of: Tuned) -> str:
    """Which runs a summary's medians cover: all of them, every tuned setting too."""
    tried = ", every setting tried" if tuned_axes(best_of) else ""
    return f"median over the {len(table)} runs{tried}; range"


def _per_run(runs: Runs, pts: pd.DataFrame) -> pd.DataFrame:
    rows = []
    info = runs.frame.set_index("run_id")
    for run, g in pts.groupby("run", sort=False):
        peak = g.loc[g["value"].idxmax()]
        last = g[g["tokens"] >= 0.75 * g["tokens"].max()]
        rows.append({"run_id": run, "name": info.at[run, "name"], "arm": g["arm"].iloc[0],
                     "condition": info.at[run, "condition"], "status": info.at[run, "status"],
                     "peak": float(peak["value"]),
                     "tokens_at_peak": float(peak["tokens"]), "final": float(g["value"].iloc[-1]),
                     "last_quarter_mean": float(last["value"].mean())})
    return pd.DataFrame(rows)


def max_logit_summary(runs: Runs, curves: pd.DataFrame,
                      best_of: Tuned = None) -> TraceSummary | None:
    """Peak and final max attention logit per run and arm, clip events under QK-Clip;
    ``best_of``: the setting that tells runs of one arm and condition apart (:func:`variants`)."""
    pts = _traces(runs, curves, "attn/max_logit", best_of)
    if pts.empty:
        return None
    table = _per_run(runs, pts)
    info = runs.frame.set_index("run_id")
    tau_col = "optim.qk_clip_tau"
    table["tau"] = [pd.to_numeric(info.at[r, tau_col], errors="coerce") if tau_col in info.columns
                    else np.nan for r in table["run_id"]]
    layer_cols = sorted((c for c in curves.columns if c.startswith("attn/max_logit/L")),
                        key=lambda c: int(c.rsplit("L", 1)[-1]))
    if layer_cols:
        peaks = curves.groupby("run_id")[layer_cols].max()
        for c in layer_cols:
            table[f"peak_{c.rsplit('/', 1)[-1]}"] = table["run_id"].map(peaks[c])
    if "attn/heads_clipped" in curves.columns:
        clips = curves.groupby("run_id")["attn/heads_clipped"].sum()
        table["clip_events"] = table["run_id"].map(clips).fillna(0.0)
    sentences: list[tuple[str, str | None]] = [(
        f"Peak max attention logit over training by arm ({_over(table, best_of)}): "
        f"{_by_arm(table, 'peak')}; mean over the last quarter of training: "
        f"{_by_arm(table, 'last_quarter_mean')}.", K2_LOGITS)]
    for arm, g in _cells(table):
        taus = g["tau"].dropna().unique()
        if len(taus) == 0:
            continue
        tau = float(taus.max())
        clips_text = (f"{int(g['clip_events'].sum())} head-clip events over {len(g)} runs; "
                      if "clip_events" in g.columns else "")
        peak, final = g["peak"].max() / tau, g["final"].median() / tau
        sentences.append((
            f"{arm} (QK-Clip tau = {fmt_value(tau)}): {clips_text}the logged pre-clip maximum "
            f"peaked at {peak:.2f} tau (the largest over runs) and ended at {final:.2f} tau "
            "(median).", K2_CLIPPED))
    diverged = table[table["status"] == "diverged"]
    if len(diverged):
        sentences.append((
            f"{len(diverged)} runs diverged: " + ", ".join(
                f"{r.name} (peak logit {r.peak:.3g})" for r in diverged.itertuples()) + ".", None))
    lines = tuple((float(t), f"QK-Clip tau = {fmt_value(t)}")
                  for t in sorted(table["tau"].dropna().unique()))
    return TraceSummary(table, Traces(pts, lines, "", "arm"), tuple(sentences))


def imbalance_summary(runs: Runs, curves: pd.DataFrame,
                      best_of: Tuned = None) -> TraceSummary | None:
    """Expert-load imbalance per run and arm: end of training, last quarter, peak;
    ``best_of`` as in :func:`max_logit_summary`."""
    pts = _traces(runs, curves, "moe/imbalance", best_of)
    if pts.empty:
        return None
    table = _per_run(runs, pts)
    if "moe/dead_experts" in curves.columns:
        last = curves.dropna(subset=["moe/dead_experts"]).groupby("run_id")["moe/dead_experts"]
        table["final_dead_experts"] = table["run_id"].map(last.last())
    sentences: list[tuple[str, str | None]] = [(
        "Expert-load imbalance (max / mean load; 1 = balanced) by arm "
        f"({_over(table, best_of)}): "
        f"mean over the last quarter of training {_by_arm(table, 'last_quarter_mean')}; "
        f"peak {_by_arm(table, 'peak')}{_first_window_text(table, pts)}.", None)]
    if "final_dead_experts" in table.columns and (table["final_dead_experts"] > 0).any():
        dead = table[table["final_dead_experts"] > 0]
        sentences.append((f"{len(dead)} runs ended with experts that received no tokens: " +
                          ", ".join(f"{r.name} ({int(r.final_dead_experts)})"
                                    for r in dead.itertuples()) + ".", None))
    return TraceSummary(table, Traces(pts, (), "", "arm"), tuple(sentences))


def _first_window_text(table: pd.DataFrame, pts: pd.DataFrame) -> str:
    """How many runs peak in their first logged window: at initialisation, before the router's
    bias has moved, so such a peak says nothing about how routing behaved in training."""
    first = pts.groupby("run")["tokens"].min()
    at_first = int((table["tokens_at_peak"].to_numpy() <= table["run_id"].map(first)).sum())
    if not at_first:
        return ""
    return (f"; in {at_first} of {len(table)} runs the peak is the first logged window "
            "(initialisation, before the bias balances the load)")


CURRENT_SATURATION = {"routing/bias_saturation", "model.moe.bias_rate_start"}
"""A run logged ``routing/bias_saturation`` on today's scale (range / 2 x travel) when it also
logged the bias schedule's ``bias_rate_start``; earlier ones read NaN."""

HEALTH_COLUMNS = ["run_id", "name", "arm", "peak_imbalance", "balanced_step",
                  "last_quarter_imbalance", "dead_experts", "bias_saturation", "collapsed"]


def _rows(g: pd.DataFrame) -> list[tuple[int, dict[str, float]]]:
    """One run's curve rows as the trainer logged them: (step, metrics present at that step)."""
    cols = [c for c in g.columns if c.startswith("moe/")]
    g = g.sort_values("step")
    return [(int(step), {c: float(v) for c, v in zip(cols, values, strict=True) if v == v})
            for step, values in zip(g["step"], g[cols].to_numpy(dtype=float), strict=True)]


def routing_health_table(runs: Runs, curves: pd.DataFrame) -> pd.DataFrame:
    """Routing health of every run with MoE curves (:data:`HEALTH_COLUMNS`); empty for dense
    sweeps. ``bias_saturation`` is the logged ``routing/bias_saturation`` (NaN for runs logged
    before its scale, :data:`CURRENT_SATURATION`)."""
    if curves.empty or "moe/imbalance" not in curves.columns:
        return pd.DataFrame(columns=HEALTH_COLUMNS)
    info = runs.frame.drop_duplicates("run_id").set_index("run_id")
    out = []
    for run, g in curves[curves["run_id"].isin(info.index)].groupby("run_id", sort=False):
        health = routing_health(_rows(g), 0.0)
        if health is None:
            continue
        current = set(info.columns) >= CURRENT_SATURATION and pd.notna(
            info.at[run, "model.moe.bias_rate_start"])
        saturation = info.at[run, "routing/bias_saturation"] if current else np.nan
        out.append({"run_id": run, "name": info.at[run, "name"],
                    "arm": info.at[run, "arm_label"], "peak_imbalance": health.peak_imbalance,
                    "balanced_step": health.balanced_step,
                    "last_quarter_imbalance": health.last_quarter_imbalance,
                    "dead_experts": health.dead_experts,
                    "bias_saturation": float(saturation), "collapsed": health.collapsed})
    return pd.DataFrame(out, columns=HEALTH_COLUMNS)


def health_counts(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per arm: (healthy runs, runs judged)."""
    return {str(a): (int((~g["collapsed"].astype(bool)).sum()), len(g))
            for a, g in table.groupby("arm", sort=False)}


def health_sentence(table: pd.DataFrame) -> str:
    """What the report says about routing health."""
    collapsed = table[table["collapsed"].astype(bool)]
    counts = ", ".join(f"{a} {h}/{n}" for a, (h, n) in health_counts(table).items())
    text = (f"Routing health ({len(table) - len(collapsed)} of {len(table)} used runs healthy; "
            f"healthy / judged by arm: {counts}). A run is collapsed when an expert got no "
            f"tokens in its last logging window, its load never balanced (max / mean <= "
            f"{BALANCED:g}) or it ended unbalanced (last-quarter mean > {COLLAPSED:g}).")
    if len(collapsed):
        text += " Collapsed: " + ", ".join(
            f"{r.name} ({int(r.dead_experts)} dead, last quarter {r.last_quarter_imbalance:.1f})"
            for r in collapsed.itertuples()) + "."
    return text
