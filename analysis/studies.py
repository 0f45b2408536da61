"""What `make plots` concludes from one sweep: fits, tables, figures to draw, report sentences.

:func:`study` takes a collected sweep (``analysis.collect``) and its ``AnalysisSpec`` and runs
what the spec's ``kind`` asks for, then the parts every sweep gets:

- ``sparsity``: the joint K2 sparsity law L = E + A (m_s C)^-alpha and its multiplier table
  (Kimi K2 report, arXiv 2507.20534, section 2.3; ``analysis.sparsity``).
- ``multiplier``: C_baseline(L*) / C_arm(L*) read off fitted frontiers at target losses L*
  (``analysis.laws.compute_multiplier``), e.g. Muon over AdamW (Moonlight, arXiv 2502.16982).
- ``logits``: the max-logit study leads (``analysis.telemetry``; K2 report Algorithm 1).
- every sweep: loss vs FLOPs per arm with a power law L = E + A C^-alpha per arm and its 95%
  bootstrap band (Hoffmann et al. 2022 functional form; runs resampled, never points); final
  val loss per arm at equal condition (ablation bars); max attention logit and expert-load
  imbalance over training when logged.

A fit that is not identified raises ``FitError`` in ``analysis.laws``; here it becomes a sentence
with the reason. Published numbers (K2 and the works it builds on) sit next to ours
(``analysis.references``); they are reference values, never inputs to a computation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.claims import Headline, logits_headline, multiplier_headlines
from analysis.collect import Collected
from analysis.fitcore import bootstrap_weights, group_codes
from analysis.laws import (
    FRONTIERS,
    FitError,
    PowerLawFit,
    compute_multiplier,
    extrapolation_check,
    fit_power_law,
    fit_sparsity_law,
    refit_power_curves,
)
from analysis.plots import (
    FinalLosses,
    LossVsCompute,
    Multipliers,
    plot_final_losses,
    plot_imbalance,
    plot_loss_vs_compute,
    plot_max_logit,
    plot_multipliers,
)
from analysis.points import (
    BUDGET_AXIS,
    FitPoints,
    Runs,
    annotate,
    fit_points,
    fmt_value,
    same_value,
    select_best,
)
from analysis.references import K2_MONOTONE, reference
from analysis.telemetry import imbalance_summary, max_logit_summary
from harness.config import AnalysisSpec


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


@dataclass(frozen=True)
class Study:
    """Everything the report says about one sweep; tables are written as ``<name>.csv``."""

    name: str
    kind: str
    description: str
    summary: str
    findings: tuple[Finding, ...]
    tables: Mapping[str, pd.DataFrame]
    figures: tuple[FigureJob, ...]
    headlines: tuple[Headline, ...] = ()  # rows of the report's summary (``analysis.claims``)


@dataclass
class Parts:
    """Accumulates the findings, tables and figures of a study while it is built."""

    findings: list[Finding] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[FigureJob] = field(default_factory=list)

    def say(self, text: str, ref: str | None = None) -> None:
        self.findings.append(Finding(text, ref))


def ci_text(lo: float, hi: float, digits: int = 2) -> str:
    """``(95% CI 1.30-1.55)``, or ``(no interval)`` when the bootstrap gave none."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "(no interval)"
    return f"(95% CI {lo:.{digits}f}-{hi:.{digits}f})"


def fewer_text(ratio: float, lo: float, hi: float) -> str:
    """``1.42x (95% CI 1.30-1.55) fewer FLOPs``; a ratio below 1 also says how many times more."""
    text = f"{ratio:.2f}x {ci_text(lo, hi)} fewer FLOPs"
    return text if ratio >= 1 else f"{text}, i.e. {1 / ratio:.2f}x more,"


def _band(fit: PowerLawFit, g: pd.DataFrame, grid: np.ndarray, n_boot: int,
          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """95% band of L(C) on ``grid`` from the same run-resampled replicates as ``fit.ci``."""
    nan = np.full(len(grid), np.nan)
    if n_boot <= 0:
        return nan, nan
    C, L = g["flops"].to_numpy(float), g["loss"].to_numpy(float)
    W = bootstrap_weights(group_codes(g["run"].to_numpy(), len(C)), n_boot, seed)
    preds = np.array([r.predict(grid) for r in refit_power_curves(fit.curves, C, L, None, W)])
    preds = preds[np.all(np.isfinite(preds), axis=1)]
    if len(preds) < 2:
        return nan, nan
    lo, hi = np.percentile(preds, [2.5, 97.5], axis=0)
    return lo, hi


def curve_fits(points: FitPoints, order: list[str], n_boot: int, seed: int, parts: Parts,
               name: str) -> None:
    """Per-arm L = E + A C^-alpha with run-resampled intervals, bands and a held-out check."""
    rows, laws = [], []
    for label in order:
        g = points.frame[points.frame["label"] == label]
        row: dict[str, Any] = {"arm": label, "n_points": len(g), "n_runs": g["run"].nunique(),
                               "source": points.source}
        try:
            fit = fit_power_law(g["flops"], g["loss"], groups=g["run"], n_boot=n_boot, seed=seed)
        except FitError as e:
            rows.append({**row, "status": "failed", "reason": str(e)})
            parts.say(f"{label}: no power law fitted ({e}).")
            continue
        ci = {k: (fit.ci[k].lo, fit.ci[k].hi) if k in fit.ci else (np.nan, np.nan)
              for k in ("E", "A", "alpha")}
        row.update(status="ok", reason="", rmse_log=fit.gof.rmse_log, r2_log=fit.gof.r2_log,
                   n_boot_ok=fit.n_boot_ok)
        for k, v in (("E", fit.E), ("A", fit.A), ("alpha", fit.alpha)):
            row.update({k: v, f"{k}_lo": ci[k][0], f"{k}_hi": ci[k][1]})
        grid = np.geomspace(g["flops"].min() / 1.5, g["flops"].max() * 1.5, 80)
        lo, hi = _band(fit, g, grid, n_boot, seed)
        laws.append(pd.DataFrame({"arm": label, "flops": grid, "loss": fit.predict(grid),
                                  "lo": lo, "hi": hi}))
        text = (f"{label}: L = {fit.E:.3f} + {fit.A:.3g} C^-{fit.alpha:.3f}, alpha = "
                f"{fit.alpha:.3f} {ci_text(*ci['alpha'], 3)}, E = {fit.E:.3f} "
                f"{ci_text(*ci['E'], 3)}, from {len(g)} points of "
                f"{row['n_runs']} runs (RMS log residual {fit.gof.rmse_log:.2%}).")
        if n_boot > 0 and row["n_runs"] <= 3:
            text += (f" With {row['n_runs']} runs the run bootstrap has few distinct resamples: "
                     "the intervals are rough.")
        if row["n_runs"] >= 2:
            try:
                chk = extrapolation_check(g["flops"], g["loss"], g["run"], holdout=1)
                row.update(holdout_mean_abs_rel_error=chk.mean_abs_rel_error,
                           holdout_max_abs_rel_error=chk.max_abs_rel_error)
                text += (f" Fitted without its largest-compute run, the law predicts that run "
                         f"within {chk.mean_abs_rel_error:.2%} on average (max "
                         f"{chk.max_abs_rel_error:.2%}).")
            except FitError as e:
                text += f" No held-out check ({e})."
        rows.append(row)
        parts.say(text)
    parts.tables["fits"] = pd.DataFrame(rows)
    if points.display.empty:
        return
    law_frame = pd.concat(laws, ignore_index=True) if laws else pd.DataFrame(
        columns=["arm", "flops", "loss", "lo", "hi"])
    parts.figures.append(FigureJob(
        "curves", plot_loss_vs_compute,
        LossVsCompute(points.display, law_frame, f"{name}: val loss vs training FLOPs, "
                      "power law per arm", "arm", arms=tuple(order)),
        "Validation loss vs training FLOPs per arm (log-log): runs (lines), fit points "
        "(markers), fitted L = E + A C^-alpha with its 95% run-bootstrap band."))


def sparsity_law(runs: Runs, points: FitPoints, order: list[str], base: str, n_boot: int,
                 seed: int, parts: Parts, name: str) -> None:
    """The K2 joint sparsity law, its multiplier table and figures (``fit_sparsity_law``)."""
    frame = points.frame
    ref_value = runs.value_of(base)
    try:
        fit = fit_sparsity_law(frame[["run", "arm", "flops", "loss"]], reference=ref_value,
                               n_boot=n_boot, seed=seed)
    except FitError as e:
        parts.say(f"Sparsity law not fitted: {e}.", reference(runs.arm_column))
        return
    mins = frame.groupby("label")["loss"].min()
    L_star = float(mins.max())
    star = L_star if L_star > fit.E else float("nan")
    parts.say(f"Joint sparsity law L = E + A (m_s C)^-alpha over {len(fit.arms)} arms "
              f"(reference {base}, m = 1): E = {fit.E:.3f} {ci_text(*_iv(fit.ci, 'E'), 3)}, "
              f"alpha = {fit.alpha:.3f} {ci_text(*_iv(fit.ci, 'alpha'), 3)}, from {len(frame)} "
              f"points of {frame['run'].nunique()} runs (RMS log residual "
              f"{fit.gof.rmse_log:.2%}); L* = {L_star:.3f} is the lowest loss every arm reached.")
    label_of = {runs.value_of(lb): lb for lb in order}
    rows = []
    for j, b in enumerate(fit.arms):
        for a in fit.arms[j + 1:]:
            r = fit.ratio(a, b, star)
            lo, hi = (r.ci.lo, r.ci.hi) if r.ci is not None else (np.nan, np.nan)
            rows.append({"arm": label_of.get(a, a), "baseline": label_of.get(b, b),
                         "ratio": r.ratio, "lo": lo, "hi": hi, "L_star": star,
                         "C_arm": r.C_arm, "C_baseline": r.C_baseline,
                         "extrapolated": r.extrapolated})
    parts.tables["multipliers"] = pd.DataFrame(rows)
    vs_base = []
    for a in fit.arms:
        if same_value(a, ref_value):
            continue
        r = fit.ratio(a, ref_value, star)
        lo, hi = (r.ci.lo, r.ci.hi) if r.ci is not None else (np.nan, np.nan)
        vs_base.append({"arm": label_of.get(a, a), "L_star": star, "ratio": r.ratio, "lo": lo,
                        "hi": hi})
        note = " (L* extrapolated beyond an arm's observed losses)" if r.extrapolated else ""
        parts.say(f"Here {label_of.get(a, a)} reaches L* = {L_star:.3f} with "
                  f"{fewer_text(r.ratio, lo, hi)} than {base}{note}.",
                  reference(runs.arm_column, a, ref_value))
    m = [fit.multipliers[a] for a in fit.arms]
    if len(m) >= 3:
        monotone = bool(np.all(np.diff(m) > 0))
        parts.say(f"Multipliers m_s by arm: {', '.join(f'{v:.2f}' for v in m)}; they "
                  f"{'rise' if monotone else 'do not rise'} monotonically with the arm value.",
                  K2_MONOTONE)
    laws = []
    for a in fit.arms:
        g = frame[frame["arm"].map(lambda v, a=a: same_value(v, a))]
        grid = np.geomspace(g["flops"].min() / 1.5, g["flops"].max() * 1.5, 80)
        pred = fit.E + fit.A * (fit.multipliers[a] * grid) ** -fit.alpha
        laws.append(pd.DataFrame({"arm": label_of.get(a, a), "flops": grid, "loss": pred}))
    parts.tables["sparsity_law"] = pd.DataFrame([
        {"arm": label_of.get(a, a), "multiplier": fit.multipliers[a],
         "lo": fit.multiplier_ci[a].lo if a in fit.multiplier_ci else np.nan,
         "hi": fit.multiplier_ci[a].hi if a in fit.multiplier_ci else np.nan,
         "E": fit.E, "A": fit.A, "alpha": fit.alpha} for a in fit.arms])
    parts.figures.append(FigureJob(
        "sparsity", plot_loss_vs_compute,
        LossVsCompute(points.display, pd.concat(laws, ignore_index=True),
                      f"{name}: val loss vs training FLOPs, joint sparsity law", "arm",
                      L_star, tuple(order)),
        "Loss vs training FLOPs per arm with the joint law L = E + A (m_s C)^-alpha "
        "(shared E and alpha; K2 report §2.3) and the target loss L*."))
    parts.figures.append(FigureJob(
        "multipliers", plot_multipliers,
        Multipliers(pd.DataFrame(vs_base), base, f"{name}: compute multiplier over {base}",
                    tuple(order)),
        f"FLOP multiplier of each arm over {base} under the joint law, 95% run-bootstrap "
        "intervals."))


def _iv(ci: Mapping[str, Any], key: str) -> tuple[float, float]:
    return (ci[key].lo, ci[key].hi) if key in ci else (np.nan, np.nan)


def target_losses(a: pd.Series, b: pd.Series) -> list[float]:
    """Three L* inside the losses both arms reached (10%, 50%, 90% of the overlap); the middle
    of the gap when the ranges do not overlap (then the multiplier says why it is missing)."""
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if hi <= lo:
        return [float((lo + hi) / 2)]
    return [float(lo + f * (hi - lo)) for f in (0.1, 0.5, 0.9)]


def multipliers(runs: Runs, points: FitPoints, order: list[str], base: str, n_boot: int,
                seed: int, parts: Parts, name: str) -> None:
    """C_base(L*) / C_arm(L*) per arm from fitted frontiers (``compute_multiplier``)."""
    frame = points.frame
    b = frame.loc[frame["label"] == base, ["run", "flops", "loss"]]
    rows = []
    for label in order:
        if label == base:
            continue
        a = frame.loc[frame["label"] == label, ["run", "flops", "loss"]]
        stars = target_losses(a["loss"], b["loss"]) if len(a) and len(b) else []
        ref = reference(runs.arm_column, runs.value_of(label), runs.value_of(base))
        try:
            curve = compute_multiplier(a, b, stars, n_boot=n_boot, seed=seed)
        except FitError as e:
            parts.say(f"No compute multiplier of {label} over {base}: {e}.", ref)
            continue
        for s, r, lo, hi, why in zip(curve.L_star, curve.ratio, curve.lo, curve.hi,
                                     curve.reason, strict=True):
            rows.append({"arm": label, "baseline": base, "L_star": s, "ratio": r, "lo": lo,
                         "hi": hi, "shared_exponent": curve.shared_exponent,
                         "frontier": curve.frontier, "reason": why})
        ok = [i for i, why in enumerate(curve.reason) if not why]
        how = FRONTIERS[curve.frontier]
        if not ok:
            parts.say(f"No compute multiplier of {label} over {base}: {curve.reason[0]}.", ref)
            continue
        i = ok[0]
        others = ", ".join(f"{curve.ratio[j]:.2f}x at L* = {curve.L_star[j]:.3f}"
                           for j in ok[1:])
        parts.say(f"{label} reaches L* = {curve.L_star[i]:.3f} with "
                  f"{fewer_text(curve.ratio[i], curve.lo[i], curve.hi[i])} than {base} "
                  f"(frontiers with {how}; {others or 'no other L* answered'}).", ref)
    table = pd.DataFrame(rows)
    parts.tables["multipliers"] = table
    if len(table):
        parts.figures.append(FigureJob(
            "multipliers", plot_multipliers,
            Multipliers(table, base, f"{name}: compute multiplier over {base}", tuple(order)),
            f"C_{base}(L*) / C_arm(L*) read off fitted frontiers at target losses L*, with 95% "
            "run-bootstrap intervals."))


def ablation(runs: Runs, order: list[str], base: str, parts: Parts, name: str) -> None:
    """Final val loss per arm at equal condition; relative change vs ``base`` over paired runs
    (same condition and seed), with its range over budgets, sizes and seeds."""
    sel = runs.frame[runs.frame["selected"]]
    if sel.empty or len(order) < 2:
        return
    stats = (sel.groupby(["arm_label", "condition"], sort=False)
             .agg(mean=("final_val_loss", "mean"), lo=("final_val_loss", "min"),
                  hi=("final_val_loss", "max"), n=("final_val_loss", "size"),
                  flops=("flops", "mean")).reset_index()
             .rename(columns={"arm_label": "arm"}))
    stats["arm"] = pd.Categorical(stats["arm"], order, ordered=True)
    stats = stats.sort_values(["condition", "arm"]).reset_index(drop=True)
    stats["arm"] = stats["arm"].astype(str)
    key = ["condition", "seed"]
    base_runs = sel[sel["arm_label"] == base].groupby(key)[["final_val_loss", "flops"]].mean()
    rel = []
    for label in order:
        if label == base:
            continue
        mine = sel[sel["arm_label"] == label].groupby(key)[["final_val_loss", "flops"]].mean()
        both = (mine / base_runs - 1).dropna(subset=["final_val_loss"])
        paired, flops = both["final_val_loss"], both["flops"]
        ref = reference(runs.arm_column, runs.value_of(label), runs.value_of(base))
        if paired.empty:
            parts.say(f"{label}: no run has a {base} run with the same settings and seed to "
                      "compare final val loss with.", ref)
            continue
        for (cond, seed), v, f in zip(paired.index, paired, flops, strict=True):
            rel.append({"arm": label, "baseline": base, "condition": cond, "seed": seed,
                        "rel_change": v, "rel_flops": f})
        spread = (f"range {paired.min():+.2%} to {paired.max():+.2%} over {len(paired)} paired "
                  "runs" if len(paired) > 1 else "one paired run")
        cost = (f", at {flops.mean():+.1%} training FLOPs" if abs(flops.mean()) > 0.005 else
                ", at equal training FLOPs")
        parts.say(f"{label} vs {base} at equal condition (same budget and settings, paired by "
                  f"seed): final val loss {paired.mean():+.2%} ({spread}){cost}.", ref)
    parts.tables["final_losses"] = stats
    parts.tables["final_loss_changes"] = pd.DataFrame(rel)
    parts.figures.append(FigureJob(
        "final_losses", plot_final_losses,
        FinalLosses(stats, f"{name}: final val loss by arm and {_grouped_by(runs)}", "arm",
                    tuple(order)),
        "Final validation loss per arm and condition (min-max over seeds as error bars)."))


def _grouped_by(runs: Runs) -> str:
    """What the bars of the final-loss figure are grouped by: ``budget`` (token budget only),
    the one setting varied besides the arm (``lr``), else ``condition``."""
    axes = runs.condition_axes
    if axes == (BUDGET_AXIS,):
        return "budget"
    return axes[0].rsplit(".", 1)[-1] if len(axes) == 1 else "condition"


def traces(runs: Runs, curves: pd.DataFrame, order: list[str], parts: Parts, name: str,
           best_of: str | None = None) -> None:
    """Max attention logit and expert-load imbalance over training (``analysis.telemetry``);
    runs of one arm and condition that differ in ``best_of`` are told apart by shade."""
    jobs = (("max_logit", "max attention logit over training", max_logit_summary,
             plot_max_logit,
             "Max attention logit over training per run (log scale), QK-Clip thresholds dotted."),
            ("imbalance", "expert-load imbalance over training", imbalance_summary,
             plot_imbalance,
             "Expert-load imbalance (max / mean load over experts, mean over MoE layers) over "
             "training per run."))
    for figure, what, summarise, draw, caption in jobs:
        summary = summarise(runs, curves, best_of)
        if summary is None:
            continue
        parts.tables[figure] = summary.table
        data = replace(summary.traces, title=f"{name}: {what}", arms=tuple(order))
        parts.figures.append(FigureJob(figure, draw, data, caption))
        for text, ref in summary.sentences:
            parts.say(text, ref)


def with_conditions(display: pd.DataFrame, runs: Runs) -> pd.DataFrame:
    """The figure points with each run's ``condition``, so the loss-vs-compute figure tells
    runs of one arm apart (e.g. two expert counts of an optimizer arm)."""
    condition = runs.frame.drop_duplicates("run_id").set_index("run_id")["condition"]
    return display.assign(condition=display["run"].map(condition).fillna("").astype(str))


def _baseline(runs: Runs, spec: AnalysisSpec, order: list[str], parts: Parts) -> str:
    """The spec's baseline arm; else the arm without the feature ("none"); else the first."""
    if spec.baseline is None or not order:
        plain = [label for label in order if fmt_value(runs.value_of(label)) == "none"]
        return plain[0] if plain else order[0] if order else ""
    for label in order:
        if same_value(runs.value_of(label), spec.baseline):
            return label
    parts.say(f"Baseline `{spec.baseline}` is not among the arms ({', '.join(order)}); "
              f"{order[0]} is used instead.")
    return order[0]


def study(name: str, collected: Collected, spec: AnalysisSpec, axes: list[str] | None = None,
          description: str = "", *, n_boot: int = 200, seed: int = 0) -> Study:
    """Analyse one sweep as its ``spec`` asks (module docstring)."""
    parts = Parts()
    if collected.runs.empty:
        parts.say("No runs logged yet.")
        return Study(name, spec.kind, description, "0 runs.", tuple(parts.findings), {}, ())
    runs = select_best(annotate(collected.runs, spec, axes), spec.best_of)
    for note in runs.notes:
        parts.say(note)
    order = runs.arms()
    base = _baseline(runs, spec, order, parts)
    points = fit_points(runs, collected.curves)
    statuses = runs.frame["status"].value_counts()
    summary = (f"{len(runs.frame)} runs ({', '.join(f'{n} {s}' for s, n in statuses.items())}), "
               f"{int(runs.frame['selected'].sum())} used; analysis `{spec.kind}` by "
               f"`{runs.arm_column}` (arms: {', '.join(order) or 'none'}; baseline: "
               f"{base or 'none'}); conditions vary "
               f"{', '.join(f'`{a}`' for a in runs.condition_axes) or 'nothing'}.")
    used = runs.frame.loc[runs.frame["selected"], "flops"].dropna()
    if len(used):
        summary += f" Training FLOPs {used.min():.2g}-{used.max():.2g} per run."
    if not order:
        parts.say("No finished run has a final val loss: nothing to fit.")
    parts.say(points.note)
    points = replace(points, display=with_conditions(points.display, runs))
    if spec.kind == "logits":
        traces(runs, collected.curves, order, parts, name, spec.best_of)
    if spec.kind == "sparsity" and order:
        sparsity_law(runs, points, order, base, n_boot, seed, parts, name)
    if spec.kind == "multiplier" and order:
        multipliers(runs, points, order, base, n_boot, seed, parts, name)
    curve_fits(points, order, n_boot, seed, parts, name)
    ablation(runs, order, base, parts, name)
    if spec.kind != "logits":
        traces(runs, collected.curves, order, parts, name, spec.best_of)
    keep = [c for c in ("run_id", "name", "status", "arm_label", "condition", "seed",
                        spec.best_of, "tokens", "flops", "final_train_loss", "final_val_loss",
                        "params_active", "params_total", "sparsity", "selected")
            if c is not None and c in runs.frame.columns]
    # the CSV names the logged size params as the report does
    shown = {"arm_label": "arm", "params_active": "active_params", "params_total": "total_params"}
    tables = {"runs": runs.frame[keep].rename(columns=shown),
              "points": points.frame, **parts.tables}
    result = Study(name, spec.kind, description, summary, tuple(parts.findings), tables,
                   tuple(parts.figures))
    heads = (logits_headline(result, base) if spec.kind == "logits"
             else multiplier_headlines(result, runs.arm_column, base)
             if spec.kind in ("multiplier", "sparsity") else [])  # curves: no claim tested
    return replace(result, headlines=tuple(heads))
