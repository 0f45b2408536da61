"""What `make plots` concludes from one sweep: fits, typed results, figures, verdicts.

:func:`study` takes a collected sweep (``analysis.collect``) and its ``AnalysisSpec`` and runs
what the spec's ``kind`` asks for, then the parts every sweep gets:

- ``sparsity``: the joint K2 sparsity law L = E + A (m_s C)^-alpha and its multipliers
  (Kimi K2 report, arXiv 2507.20534, section 2.3; ``analysis.comparisons``).
- ``multiplier``: C_baseline(L*) / C_arm(L*) read off fitted frontiers at every target loss
  L* (``analysis.comparisons``), e.g. Muon over AdamW (Moonlight, arXiv 2502.16982), in FLOPs
  and in measured wall-clock.
- ``logits``: the max-logit study leads (``analysis.telemetry``; K2 report Algorithm 1).
- every sweep: loss vs FLOPs per arm with a power law L = E + A C^-alpha per arm and its 95%
  bootstrap band (Hoffmann et al. 2022 functional form; Efron & Tibshirani 1993 bootstrap of
  the independent unit: seeds within each arm and condition, or runs when there is one seed);
  paired final-loss changes with t intervals and the minimum detectable effect
  (``analysis.inference``); max attention logit and expert-load imbalance when logged.

The results are typed (``analysis.results``); the verdicts of the sweep's declared claim
(``analysis.claim``) are ``analysis.claims``'s, read from those fields. A fit that is not
identified raises ``FitError`` in ``analysis.laws``; here it becomes a sentence with the reason.
Published numbers sit next to ours (``analysis.references``); they never enter a computation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from analysis.claims import Headline, cap_headline, headlines
from analysis.collect import Collected
from analysis.comparisons import multipliers, paired_changes, sparsity_law
from analysis.fitcore import bootstrap_weights, group_codes
from analysis.laws import (
    FitError,
    PowerLawFit,
    extrapolation_check,
    fit_power_law,
    refit_power_curves,
)
from analysis.parts import Design, FigureJob, Finding, Parts
from analysis.plots import (
    FinalLosses,
    LossVsCompute,
    plot_final_losses,
    plot_imbalance,
    plot_loss_vs_compute,
    plot_max_logit,
)
from analysis.points import (
    BUDGET_AXIS,
    REPORTED,
    REPORTED_SPLIT,
    FitPoints,
    Runs,
    Tuned,
    annotate,
    arm_label,
    fit_points,
    fmt_value,
    rows_where,
    same_value,
    select_best,
    throughput,
    where_text,
)
from analysis.results import ArmLogits, Evidence, Logits, Multiplier, PairedChange, SparsityLaw
from analysis.telemetry import (
    health_counts,
    health_sentence,
    imbalance_summary,
    max_logit_summary,
    routing_health_table,
)
from analysis.wording import ci_text
from harness.config import AnalysisSpec

__all__ = ["FigureJob", "Finding", "Study", "study"]

VAL_SET_NOTE = (
    "Scored on the old two-file validation set: the runs logged `val/loss` only (no `test/loss`), "
    "so every loss here is a val-set number, and the same set chose any tuned setting."
)


@dataclass(frozen=True)
class Study:
    """Everything the report says about one sweep; ``tables`` are written as ``<name>.csv``
    (the typed results' ``.table()`` among them); ``headlines``: the summary rows."""

    name: str
    kind: str
    description: str
    summary: str
    findings: tuple[Finding, ...]
    tables: Mapping[str, pd.DataFrame]
    figures: tuple[FigureJob, ...]
    headlines: tuple[Headline, ...] = ()
    multipliers: tuple[Multiplier, ...] = ()
    changes: tuple[PairedChange, ...] = ()
    law: SparsityLaw | None = None
    logits: Logits | None = None
    edges: tuple[tuple[str, str], ...] = ()


def _band(fit: PowerLawFit, g: pd.DataFrame, grid: np.ndarray, n_boot: int,
          seed: int, unit: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """95% band of L(C) on ``grid`` from the same replicates as ``fit.ci`` (none when those
    are not estimable)."""
    nan = np.full(len(grid), np.nan)
    if n_boot <= 0 or not fit.ci:
        return nan, nan
    C, L = g["flops"].to_numpy(float), g["loss"].to_numpy(float)
    W = bootstrap_weights(group_codes(unit.to_numpy(), len(C)), n_boot, seed)
    preds = np.array([r.predict(grid) for r in refit_power_curves(fit.curves, C, L, None, W)])
    preds = preds[np.all(np.isfinite(preds), axis=1)]
    if len(preds) < 2:
        return nan, nan
    lo, hi = np.percentile(preds, [2.5, 97.5], axis=0)
    return lo, hi


def _claim_points(d: Design, parts: Parts) -> pd.DataFrame:
    """The fit points of the runs ``analysis.claim.where`` names (all without it): one law
    across runs at different settings of a non-scale axis (e.g. two learning rates) would mix
    configurations."""
    frame = d.points.frame
    if not d.where or not set(d.where) <= set(d.runs.frame.columns):
        return frame
    keep = set(rows_where(d.runs.frame, d.where)["run_id"])
    parts.say(f"The per-arm laws fit only the runs with {where_text(d.where)} "
              "(`analysis.claim.where`); the "
              "figure shows every run.")
    return frame[frame["run"].isin(keep)]


def holdout_text(g: pd.DataFrame, row: dict[str, Any]) -> str:
    """Refit without every run at the largest compute (all seeds of the top budget, so none of
    them informs the fit) and predict them: an extrapolation check, recorded in ``row``."""
    run_c = g.groupby("run")["flops"].max()
    top = int((run_c >= 0.99 * run_c.max()).sum())
    if top >= len(run_c):
        return " No held-out check (every run has the same compute)."
    try:
        chk = extrapolation_check(g["flops"], g["loss"], g["run"], holdout=top)
    except FitError as e:
        return f" No held-out check (the fit without the top budget: {e})."
    row.update(holdout_mean_abs_rel_error=chk.mean_abs_rel_error,
               holdout_max_abs_rel_error=chk.max_abs_rel_error)
    runs = "its largest-compute run" if top == 1 else f"the {top} runs at its largest compute"
    return (f" Fitted without {runs}, the law predicts {'it' if top == 1 else 'them'} within "
            f"{chk.mean_abs_rel_error:.2%} on average (max {chk.max_abs_rel_error:.2%}).")


def curve_fits(d: Design, parts: Parts) -> None:
    """Per-arm L = E + A C^-alpha with bootstrap intervals, bands and a held-out check."""
    points, order, n_boot, seed, name = d.points, list(d.order), d.n_boot, d.seed, d.name
    rows, laws = [], []
    fitted = _claim_points(d, parts)
    for label in order:
        g = d.with_seeds(fitted[fitted["label"] == label])
        unit = g["seed"] if d.by_seed else g["run"]
        row: dict[str, Any] = {"arm": label, "n_points": len(g), "n_runs": g["run"].nunique(),
                               "source": points.source}
        try:
            fit = fit_power_law(g["flops"], g["loss"], groups=unit, n_boot=n_boot, seed=seed,
                                unit=d.unit)
        except FitError as e:
            rows.append({**row, "status": "failed", "reason": str(e)})
            parts.say(f"{label}: no power law fitted ({e}).")
            continue
        ci = {k: (fit.ci[k].lo, fit.ci[k].hi) if k in fit.ci else (np.nan, np.nan)
              for k in ("E", "A", "alpha")}
        row.update(status="ok", reason="", rmse_log=fit.gof.rmse_log, r2_log=fit.gof.r2_log,
                   n_boot_ok=fit.n_boot_ok, boot_failed_share=fit.boot.failed_share,
                   not_estimable=fit.boot.reason if n_boot > 0 else "")
        for k, v in (("E", fit.E), ("A", fit.A), ("alpha", fit.alpha)):
            row.update({k: v, f"{k}_lo": ci[k][0], f"{k}_hi": ci[k][1]})
        grid = np.geomspace(g["flops"].min() / 1.5, g["flops"].max() * 1.5, 80)
        lo, hi = _band(fit, g, grid, n_boot, seed, unit)
        laws.append(pd.DataFrame({"arm": label, "flops": grid, "loss": fit.predict(grid),
                                  "lo": lo, "hi": hi}))
        text = (f"{label}: L = {fit.E:.3f} + {fit.A:.3g} C^-{fit.alpha:.3f}, alpha = "
                f"{fit.alpha:.3f} {ci_text(*ci['alpha'], 3)}, E = {fit.E:.3f} "
                f"{ci_text(*ci['E'], 3)}, from {len(g)} points of "
                f"{row['n_runs']} runs (RMS log residual {fit.gof.rmse_log:.2%}).")
        if n_boot > 0 and not fit.boot.estimable:
            text += f" Intervals {fit.boot.reason}."
        if row["n_runs"] >= 2:
            text += holdout_text(g, row)
        rows.append(row)
        parts.say(text)
    parts.tables["fits"] = pd.DataFrame(rows)
    if points.display.empty:
        return
    words, ylabel = points.axis()
    law_frame = pd.concat(laws, ignore_index=True) if laws else pd.DataFrame(
        columns=["arm", "flops", "loss", "lo", "hi"])
    parts.figures.append(FigureJob(
        "curves", plot_loss_vs_compute,
        LossVsCompute(points.display, law_frame, f"{name}: {words} vs training FLOPs, "
                      "power law per arm", "arm", arms=tuple(order), ylabel=ylabel),
        f"Loss vs training FLOPs per arm (log-log): runs' val-loss curves (lines), fit points "
        f"(markers: {points.split} loss), fitted L = E + A C^-alpha with its 95% bootstrap band "
        "where estimable."))


def final_losses(runs: Runs, order: list[str], parts: Parts, name: str) -> None:
    """Final reported loss (test where logged, else val) per arm and condition (bars; min-max
    over seeds)."""
    sel = runs.frame[runs.frame["selected"]]
    if sel.empty or len(order) < 2:
        return
    split = str(sel[REPORTED_SPLIT].iloc[0])
    stats = (sel.groupby(["arm_label", "condition"], sort=False)
             .agg(mean=(REPORTED, "mean"), lo=(REPORTED, "min"),
                  hi=(REPORTED, "max"), n=(REPORTED, "size"),
                  flops=("flops", "mean")).reset_index()
             .rename(columns={"arm_label": "arm"}))
    stats["arm"] = pd.Categorical(stats["arm"], order, ordered=True)
    stats = stats.sort_values(["condition", "arm"]).reset_index(drop=True)
    stats["arm"] = stats["arm"].astype(str)
    parts.tables["final_losses"] = stats
    parts.figures.append(FigureJob(
        "final_losses", plot_final_losses,
        FinalLosses(stats, f"{name}: final {split} loss by arm and {_grouped_by(runs)}", "arm",
                    tuple(order), split),
        f"Final {split} loss per arm and condition (min-max over seeds as error bars)."))


def _grouped_by(runs: Runs) -> str:
    """What the bars of the final-loss figure are grouped by: ``budget`` (token budget only),
    the one setting varied besides the arm (``lr``), else ``condition``."""
    axes = runs.condition_axes
    if axes == (BUDGET_AXIS,):
        return "budget"
    return axes[0].rsplit(".", 1)[-1] if len(axes) == 1 else "condition"


def traces(runs: Runs, curves: pd.DataFrame, order: list[str], parts: Parts, name: str,
           best_of: Tuned = None) -> None:
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


def routing(runs: Runs, curves: pd.DataFrame, parts: Parts,
            where: dict[str, Any] | None = None) -> dict[str, tuple[int, int]]:
    """Routing health of the used runs (``analysis.telemetry``): a table, a finding, and the
    (healthy, judged) counts per arm that the verdicts read: of the runs with the settings
    ``where`` (``analysis.claim.where``) when given, as the claim reads only those."""
    if curves.empty:
        return {}
    used = runs.frame.loc[runs.frame["selected"], "run_id"]
    table = routing_health_table(runs, curves[curves["run_id"].isin(used)])
    if table.empty:
        return {}
    parts.tables["routing"] = table
    parts.say(health_sentence(table))
    where = {k: v for k, v in (where or {}).items() if k in runs.frame.columns}
    read = rows_where(runs.frame, where)["run_id"]
    return health_counts(table[table["run_id"].isin(read)])


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


def _logits(table: pd.DataFrame | None, base: str) -> Logits | None:
    """Peak and late max logit per arm and condition (medians over seeds) from the max-logit
    table."""
    if table is None or not len(table):
        return None
    cells = table.groupby(["condition", "arm"], sort=False).agg(
        peak=("peak", "median"), late=("last_quarter_mean", "median"), tau=("tau", "first"))
    return Logits(base, tuple(ArmLogits(str(a), float(r["peak"]), float(r["late"]),
                                        float(r["tau"]), str(c))
                              for (c, a), r in cells.sort_index(level=0, sort_remaining=False)
                              .iterrows()))


def evidence(runs: Runs, spec: AnalysisSpec, base: str, parts: Parts,
             health: dict[str, tuple[int, int]] | None = None) -> list[Evidence]:
    """What each claimed arm (``spec.claim.arms``) present in the study is judged on;
    ``health`` the (healthy, judged) runs per arm (:func:`analysis.telemetry.health_counts`)."""
    if spec.claim is None:
        return []
    health = health or {}
    by_arm = {m.arm: m for m in parts.multipliers}
    changes = {c.arm: c for c in parts.changes}
    out = []
    for value in spec.claim.arms:
        label = arm_label(runs.arm_column, value)
        if label == base or label not in runs.arms():
            continue
        edges = tuple(c for a, c in runs.edges if a in (label, base))
        out.append(Evidence(label, base, by_arm.get(label), changes.get(label), edges,
                            (health.get(label), health.get(base))))
    return out


def _summary(runs: Runs, spec: AnalysisSpec, order: list[str], base: str,
             curves: pd.DataFrame, d: Design) -> str:
    statuses = runs.frame["status"].value_counts()
    text = (f"{len(runs.frame)} runs ({', '.join(f'{n} {s}' for s, n in statuses.items())}), "
            f"{int(runs.frame['selected'].sum())} used; analysis `{spec.kind}` by "
            f"`{runs.arm_column}` (arms: {', '.join(order) or 'none'}; baseline: "
            f"{base or 'none'}); conditions vary "
            f"{', '.join(f'`{a}`' for a in runs.condition_axes) or 'nothing'}.")
    used = runs.frame.loc[runs.frame["selected"], "flops"].dropna()
    if len(used):
        text += f" Training FLOPs {used.min():.2g}-{used.max():.2g} per run."
    text += (f" Bootstrap intervals resample {d.unit} ({d.n_seeds} seed"
             f"{'s' * (d.n_seeds != 1)} per arm and condition).")
    if (runs.frame[REPORTED_SPLIT] == "val").all():
        text += f" {VAL_SET_NOTE}"
    else:
        chosen = ("Learning rates and other choices were made on the validation split; every"
                  if spec.tuned else "Every")
        text += (f" {chosen} final loss reported here is on the test split (curves along "
                 "training, and laws fitted to them, are validation loss).")
    return text


def _design(name: str, runs: Runs, points: FitPoints, curves: pd.DataFrame, spec: AnalysisSpec,
            base: str, n_boot: int, seed: int) -> Design:
    sel = runs.frame[runs.frame["selected"]]
    seeds = sel.groupby(["arm_label", "condition"])["seed"].nunique()
    n_seeds = int(seeds.max()) if len(seeds) else 1
    rate = throughput(runs, curves)
    flop_rate = {str(a): float(rate.reindex(g["run_id"]).median())
                 for a, g in sel.groupby("arm_label") if len(rate.reindex(g["run_id"]).dropna())}
    read_at = spec.claim.read_at if spec.claim is not None else "largest_budget"
    where = dict(spec.claim.where) if spec.claim is not None else {}
    return Design(name, runs, points, tuple(runs.arms()), base, n_boot, seed, n_seeds >= 2,
                  n_seeds, flop_rate, read_at, where)


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
    d = _design(name, runs, points, collected.curves, spec, base, n_boot, seed)
    summary = _summary(runs, spec, order, base, collected.curves, d)
    if not order:
        parts.say("No finished run has a final val loss: nothing to fit.")
    parts.say(points.note)
    d = replace(d, points=replace(points, display=with_conditions(points.display, runs)))
    if spec.kind == "logits":
        traces(runs, collected.curves, order, parts, name, spec.best_of)
    if spec.kind == "sparsity" and order:
        sparsity_law(d, parts)
    if spec.kind == "multiplier" and order:
        multipliers(d, parts)
    curve_fits(d, parts)
    if len(order) >= 2:
        paired_changes(d, parts)
    final_losses(runs, order, parts, name)
    if spec.kind != "logits":
        traces(runs, collected.curves, order, parts, name, spec.best_of)
    health = routing(runs, collected.curves, parts, spec.claim.where if spec.claim else None)
    keep = [c for c in ("run_id", "name", "status", "arm_label", "condition", "seed",
                        *spec.tuned, "tokens", "flops", "final_train_loss", "final_val_loss",
                        "final_test_loss",
                        "params_active", "params_total", "sparsity", "selected")
            if c is not None and c in runs.frame.columns]
    # the CSV names the logged size params as the report does
    shown = {"arm_label": "arm", "params_active": "active_params", "params_total": "total_params"}
    tables: dict[str, pd.DataFrame] = {"runs": runs.frame[keep].rename(columns=shown),
                                       "points": points.frame, **parts.tables}
    if parts.law is not None:
        tables["sparsity_law"] = parts.law.table()
        tables["multipliers"] = pd.concat([m.table() for m in parts.law.pairs],
                                          ignore_index=True)
    logits = _logits(parts.tables.get("max_logit"), base) if spec.kind == "logits" else None
    heads = headlines(name, spec.claim, evidence(runs, spec, base, parts, health), spec.edge,
                      spec.collapse_rule)
    if logits is not None:
        heads = [cap_headline(name, logits, spec.claim.differ if spec.claim else ""), *heads]
    return Study(name, spec.kind, description, summary, tuple(parts.findings), tables,
                 tuple(parts.figures), tuple(heads), tuple(parts.multipliers),
                 tuple(parts.changes), parts.law, logits, runs.edges)
