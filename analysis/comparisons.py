"""Arm-over-baseline comparisons of one sweep, as typed results (``analysis.results``).

- :func:`multipliers`: C_base(L*) / C_arm(L*) from fitted frontiers (``compute_multiplier``)
  at every target loss: three inside the losses both arms reached (10%, 50%, 90% of the
  overlap) and the pre-registered read-out point (``analysis.claim.read_at``).
- :func:`sparsity_law`: the joint K2 law L = E + A (m_s C)^-alpha (Kimi K2 report, arXiv
  2507.20534, sec. 2.3) and each arm's multiplier over the baseline.
- :func:`paired_changes`: final-loss change of each arm over paired baseline runs (same
  condition and seed), with t intervals from the seed spread and the MDE
  (``analysis.inference``).

Every multiplier is given in FLOPs and in wall-clock: the FLOPs multiplier x the arm's
measured FLOP/s over the baseline's (``perf/tokens_per_s``, same hardware), an indication whose
interval leaves out the throughput's own noise. Intervals resample the
independent unit (``Design.unit``); one not estimable (``analysis.fitcore.BootCheck``) is said
so, never given as a number.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd

from analysis.fitcore import BootCheck, FitError
from analysis.inference import (
    Noise,
    mde_factor,
    noise_of,
    seed_mean_noise,
    t_interval,
)
from analysis.laws import FRONTIERS, SparsityLawFit, compute_multiplier, fit_sparsity_law
from analysis.parts import Design, FigureJob, Parts
from analysis.plots import LossVsCompute, Multipliers, plot_loss_vs_compute, plot_multipliers
from analysis.points import REPORTED, rows_where, same_value, where_text
from analysis.references import K2_MONOTONE, reference
from analysis.results import (
    Estimate,
    Multiplier,
    MultiplierAt,
    Pair,
    PairedChange,
    SparsityLaw,
)
from analysis.wording import JOINT_LAW, boot_method, ci_text, multiplier_at, paired_text

NAN = float("nan")


def target_losses(a: pd.Series, b: pd.Series) -> list[float]:
    """Three L* inside the losses both arms reached (10%, 50%, 90% of the overlap); the middle
    of the gap when the ranges do not overlap (then the multiplier says why it is missing)."""
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if hi <= lo:
        return [float((lo + hi) / 2)]
    return [float(lo + f * (hi - lo)) for f in (0.1, 0.5, 0.9)]


def largest_budget_loss(d: Design, label: str) -> float:
    """The lowest loss both ``label`` and the baseline reached at their largest common budget:
    the higher of their mean final losses there (NaN without a common budget)."""
    sel = d.runs.frame[d.runs.frame["selected"]]
    mine, base = sel[sel["arm_label"] == label], sel[sel["arm_label"] == d.base]
    common = set(mine["budget"]) & set(base["budget"])
    if not common:
        return NAN
    top = max(common, key=lambda b: float(base.loc[base["budget"] == b, "flops"].mean()))
    return float(max(mine.loc[mine["budget"] == top, REPORTED].mean(),
                     base.loc[base["budget"] == top, REPORTED].mean()))


def _estimate(value: float, lo: float, hi: float, boot: BootCheck, se: float,
              why_missing: str) -> Estimate:
    reason = why_missing or boot.reason
    return Estimate(value, lo, hi, reason, boot_method(boot.unit, boot.n_boot, boot.n_failed),
                    se)


def _point(star: float, value: float, lo: float, hi: float, boot: BootCheck, se: float,
           why: str, ratio: float) -> MultiplierAt:
    flops = _estimate(value, lo, hi, boot, se, why)
    return MultiplierAt(star, flops, flops.scaled(ratio) if math.isfinite(ratio) else
                        Estimate(NAN, reason="no throughput logged"), why)


def _read_star(d: Design, label: str) -> float:
    return float(d.read_at) if not isinstance(d.read_at, str) else largest_budget_loss(d, label)


def multiplier_of(d: Design, label: str) -> Multiplier:
    """One arm's multiplier over the baseline at every target loss (module docstring)."""
    a, b = d.frame(label), d.frame(d.base)
    read = _read_star(d, label)
    stars = target_losses(a["loss"], b["loss"]) if len(a) and len(b) else []
    if math.isfinite(read):
        stars = [read, *stars]
    curve = compute_multiplier(a, b, stars, n_boot=d.n_boot, seed=d.seed)
    boots = curve.boot or (BootCheck(0, 0, 0, d.unit),) * len(stars)
    ses = curve.se_log or (NAN,) * len(stars)
    ratio = d.throughput_ratio(label)
    at = tuple(_point(*row, ratio) for row in zip(curve.L_star, curve.ratio, curve.lo, curve.hi,
                                                  boots, ses, curve.reason, strict=True))
    read_point = at[0] if math.isfinite(read) else None
    return Multiplier(label, d.base, FRONTIERS[curve.frontier], at, ratio, read_point,
                      tuple(FRONTIERS[m] for m in curve.passed_over), d.n_seeds)


def multipliers(d: Design, parts: Parts) -> None:
    """Each arm's multiplier over the baseline; a sentence lists every target loss."""
    for label in d.order:
        if label == d.base:
            continue
        ref = reference(d.runs.arm_column, d.runs.value_of(label), d.runs.value_of(d.base))
        try:
            m = multiplier_of(d, label)
        except FitError as e:
            parts.say(f"No compute multiplier of {label} over {d.base}: {e}.", ref)
            continue
        parts.multipliers.append(m)
        points = "; ".join(_point_texts(m))
        over = (f"; more flexible frontiers passed over because their bootstrap was not "
                f"estimable: {', '.join(m.passed_over)}" if m.passed_over else "")
        speed = (f"measured throughput {label} / {d.base}: {m.throughput_ratio:.2f}x FLOP/s"
                 if math.isfinite(m.throughput_ratio) else "no throughput logged")
        parts.say(f"{label} over {d.base}: {points}. Frontiers with {m.frontier}{over}; "
                  f"{speed}; intervals: {m.at[0].flops.method if m.at else 'none'}.", ref)
    table = pd.concat([m.table() for m in parts.multipliers], ignore_index=True) if (
        parts.multipliers) else pd.DataFrame()
    parts.tables["multipliers"] = table
    _multiplier_figure(parts, d, table,
                       f"C_{d.base}(L*) / C_arm(L*) read off fitted frontiers at target losses "
                       "L*, with 95% bootstrap intervals; values that are not estimable are left "
                       "out.")


def _point_texts(m: Multiplier) -> list[str]:
    """The read-out first, then the target losses 10%, 50% and 90% into the range of losses
    both arms reached (:func:`target_losses`), each named as what it is."""
    texts = [f"pre-registered read-out: {multiplier_at(m, m.read)}"] if m.read else []
    rest = [multiplier_at(m, p) for p in m.at if p is not m.read]
    lead = "descriptive, at 10%, 50% and 90% into the loss range both arms reached: "
    if rest:
        texts.append((lead if len(rest) == 3 else "") + "; ".join(rest))
    return texts


def _multiplier_figure(parts: Parts, d: Design, table: pd.DataFrame, caption: str) -> None:
    """The multipliers figure of the estimable rows of ``table`` (none when there are none)."""
    shown = _drawable(table)
    if len(shown):
        parts.figures.append(FigureJob(
            "multipliers", plot_multipliers,
            Multipliers(shown, d.base, f"{d.name}: compute multiplier over {d.base}", d.order),
            caption))


def _drawable(table: pd.DataFrame) -> pd.DataFrame:
    """Rows a figure may show: answered, and estimable (or drawn without a bootstrap)."""
    if not len(table):
        return table
    why = table["not_estimable"].fillna("")
    return table[~why.str.startswith("not estimable") & table["ratio"].notna()]


def _law_estimate(fit: SparsityLawFit, key: str) -> Estimate:
    ci, boot = fit.ci, fit.boot
    value = float(fit.E if key == "E" else fit.alpha)
    if key in ci:
        return Estimate(value, ci[key].lo, ci[key].hi, "", boot_method(boot.unit, boot.n_boot,
                                                                       boot.n_failed))
    return Estimate(value, reason=boot.reason or "no bootstrap")


def sparsity_law(d: Design, parts: Parts) -> None:
    """The K2 joint sparsity law, each arm's multiplier over the baseline, figures."""
    frame = d.with_seeds(d.points.frame)
    ref_value = d.runs.value_of(d.base)
    cols = ["run", "arm", "flops", "loss", *(["seed"] if d.by_seed else [])]
    try:
        fit = fit_sparsity_law(frame[cols], reference=ref_value, n_boot=d.n_boot, seed=d.seed)
    except FitError as e:
        parts.say(f"Sparsity law not fitted: {e}.", reference(d.runs.arm_column))
        return
    L_star = float(frame.groupby("label")["loss"].min().max())
    star = L_star if L_star > fit.E else NAN
    label_of = {d.runs.value_of(lb): lb for lb in d.order}

    def mult(a: Hashable, b: Hashable) -> Multiplier:
        r = fit.ratio(a, b, star)
        i, j = fit.arms.index(a), fit.arms.index(b)
        se = (float(np.std(fit.log_m_samples[:, i] - fit.log_m_samples[:, j], ddof=1))
              if len(fit.log_m_samples) > 1 else NAN)
        lo, hi = (r.ci.lo, r.ci.hi) if r.ci is not None else (NAN, NAN)
        arm, base = str(label_of.get(a, a)), str(label_of.get(b, b))
        rate = (d.flop_rate.get(arm, NAN) / d.flop_rate[base]) if d.flop_rate.get(base) else NAN
        p = _point(star, r.ratio, lo, hi, fit.boot, se, "", rate)
        return Multiplier(arm, base, JOINT_LAW, (p,), rate, p, (), d.n_seeds)

    pairs = tuple(mult(a, b) for j, b in enumerate(fit.arms) for a in fit.arms[j + 1:])
    vs_base = tuple(mult(a, ref_value) for a in fit.arms if not same_value(a, ref_value))
    m_est = tuple((str(label_of.get(a, a)), Estimate(
        fit.multipliers[a], *((fit.multiplier_ci[a].lo, fit.multiplier_ci[a].hi)
                              if a in fit.multiplier_ci else (NAN, NAN)),
        "" if a in fit.multiplier_ci else (fit.boot.reason or "no bootstrap"))) for a in fit.arms)
    parts.law = SparsityLaw(_law_estimate(fit, "E"), _law_estimate(fit, "alpha"), fit.A, L_star,
                            m_est, vs_base, pairs)
    parts.multipliers.extend(vs_base)
    _say_law(d, parts, fit.gof.rmse_log, len(frame), frame["run"].nunique(), fit.boot)
    for m in vs_base:
        _say_cross_check(d, parts, m.arm)
    _law_figures(d, parts, fit, frame, label_of, L_star)


def _say_cross_check(d: Design, parts: Parts, label: str) -> None:
    """The arm's multiplier from per-arm frontiers, which need not share the joint law's floor
    E: where the two disagree, the shared floor is doing the work (a description, not the
    read-out)."""
    try:
        m = multiplier_of(d, label)
    except FitError as e:
        parts.say(f"Cross-check of {label} over {d.base} on per-arm frontiers: not fitted ({e}).")
        return
    if m.read is not None:
        parts.say(f"Cross-check, not the read-out: per-arm frontiers ({m.frontier}; no shared "
                  f"floor, each arm's fit is listed below) put {label} over {d.base} at "
                  f"{multiplier_at(m, m.read)}.")


def _say_law(d: Design, parts: Parts, rmse: float, n_points: int, n_runs: int,
             boot: BootCheck) -> None:
    law = parts.law
    assert law is not None
    parts.say(f"Joint sparsity law L = E + A (m_s C)^-alpha over {len(law.multipliers)} arms "
              f"(reference {d.base}, m = 1): E = {law.E.value:.3f} {ci_text(law.E.lo, law.E.hi, 3)}"
              f", alpha = {law.alpha.value:.3f} {ci_text(law.alpha.lo, law.alpha.hi, 3)}, from "
              f"{n_points} points of {n_runs} runs (RMS log residual {rmse:.2%}); L* = "
              f"{law.L_star:.3f} is the lowest loss every arm reached; intervals: "
              f"{boot_method(boot.unit, boot.n_boot, boot.n_failed)}"
              f"{'; ' + boot.reason if boot.reason else ''}.")
    floor = known_floor(d.runs.frame[d.runs.frame["selected"]])
    if floor is not None:
        parts.say(floor_text(law.E, floor))
    for m in law.vs_base:
        parts.say(f"Here {m.arm} over {d.base}: {multiplier_at(m, m.at[0])}.",
                  reference(d.runs.arm_column, d.runs.value_of(m.arm), d.runs.value_of(d.base)))
    values = [e.value for _, e in law.multipliers]
    if len(values) >= 3:
        monotone = bool(np.all(np.diff(values) > 0))
        parts.say(f"Multipliers m_s by arm: {', '.join(f'{v:.2f}' for v in values)}; the point "
                  f"estimates {'rise' if monotone else 'do not rise'} monotonically with the arm "
                  "value (a description, not a test).", K2_MONOTONE)


SYNTHETIC_KEYS = ("data.synthetic_vocab", "data.synthetic_order", "data.synthetic_branching",
                  "data.synthetic_seed", "data.synthetic_topics", "data.synthetic_doc_tokens")


def known_floor(runs: pd.DataFrame) -> float | None:
    """The exact entropy rate (nats per token) of the synthetic language every run trained on
    (:func:`harness.data.synthetic.synthetic_entropy`); None for other corpora, runs on
    different languages, or runs that did not log the language's settings."""
    if "data.corpus" not in runs.columns or set(runs["data.corpus"]) != {"synthetic"}:
        return None
    if not set(SYNTHETIC_KEYS) <= set(runs.columns):
        return None
    languages = runs[list(SYNTHETIC_KEYS)].drop_duplicates()
    if len(languages) != 1 or languages.isna().any(axis=None):
        return None
    vocab, order, branching, seed, topics, doc_tokens = (int(v) for v in languages.iloc[0])
    from harness.data.synthetic import synthetic_entropy  # imports torch: only when needed

    return synthetic_entropy(vocab, order, branching, seed, topics, doc_tokens)


def floor_text(E: Estimate, floor: float) -> str:
    """The fitted floor E against the language's known entropy rate, which no model beats."""
    known = f"The language's exact entropy rate is {floor:.4f} nats per token"
    if math.isfinite(E.hi) and E.hi < floor:
        return (f"{known}, and the whole interval of E lies below it: no model can go below "
                "the entropy rate, so over these budgets E is a fitting parameter that trades "
                "off with alpha, not the irreducible loss; the multipliers read the fitted "
                "curves inside the measured compute range.")
    if E.value < floor:
        return f"{known}; E lies below it, though its interval reaches it."
    return f"{known}; E lies at or above it, as it must."


def _law_figures(d: Design, parts: Parts, fit: SparsityLawFit, frame: pd.DataFrame,
                 label_of: dict[Hashable, str], L_star: float) -> None:
    laws = []
    for a in fit.arms:
        g = frame[frame["arm"].map(lambda v, a=a: same_value(v, a))]
        grid = np.geomspace(g["flops"].min() / 1.5, g["flops"].max() * 1.5, 80)
        pred = fit.E + fit.A * (fit.multipliers[a] * grid) ** -fit.alpha
        laws.append(pd.DataFrame({"arm": label_of.get(a, a), "flops": grid, "loss": pred}))
    words, ylabel = d.points.axis()
    parts.figures.append(FigureJob(
        "sparsity", plot_loss_vs_compute,
        LossVsCompute(d.points.display, pd.concat(laws, ignore_index=True),
                      f"{d.name}: {words} vs training FLOPs, joint sparsity law", "arm",
                      L_star, d.order, ylabel),
        "Loss vs training FLOPs per arm with the joint law L = E + A (m_s C)^-alpha "
        "(shared E and alpha; K2 report §2.3) and the target loss L*."))
    assert parts.law is not None
    table = pd.concat([m.table() for m in parts.law.vs_base], ignore_index=True)
    _multiplier_figure(parts, d, table, f"FLOP multiplier of each arm over {d.base} under the "
                       "joint law, 95% bootstrap intervals.")


def paired_change(label: str, base: str, pairs: list[Pair]) -> PairedChange:
    """Mean change at the largest budget and over every pair (``pairs`` sorted by the
    baseline's FLOPs, so the last pair's budget is the largest), each with a t interval that
    resamples the independent unit (:mod:`analysis.inference`): at the largest budget the spread
    of that budget's paired seeds (Student's paired t); over every pair the spread of each
    seed's mean change, since a seed's budgets share a trunk. With one seed the spread across
    conditions stands in for both."""
    whole = noise_of([p.condition for p in pairs], [p.rel_change for p in pairs])
    top = pairs[-1].budget
    at = [p for p in pairs if p.budget == top]
    noise = noise_of([p.condition for p in at], [p.rel_change for p in at])
    if noise.source != "seeds":  # one seed at the largest budget
        noise = whole
    by_seed = seed_mean_noise([p.seed for p in pairs], [p.rel_change for p in pairs])
    n_seeds = len({p.seed for p in pairs})
    overall = (_t_estimate([p.rel_change for p in pairs], by_seed, n_seeds,
                           f"t over the {n_seeds} seeds' mean changes, {by_seed.df} df")
               if by_seed.df >= 1 else
               _t_estimate([p.rel_change for p in pairs], whole, len(pairs), _noise_words(whole)))
    largest = _t_estimate([p.rel_change for p in at], noise, len(at), _noise_words(noise))
    conds = sorted({p.condition for p in at})
    name = conds[0] if len(conds) == 1 else f"{len(conds)} conditions of one budget"
    return PairedChange(label, base, tuple(pairs), overall, largest, top, noise,
                        mde_factor(noise.df) * largest.se, len(at), name)


def _noise_words(noise: Noise) -> str:
    """How a paired interval's noise was estimated, for the report."""
    return {"seeds": f"seed sd {noise.sd:.2%} ({noise.df} df)",
            "conditions": f"one seed: noise from the spread across conditions, sd "
                          f"{noise.sd:.2%} ({noise.df} df)",
            "none": "no noise estimate"}[noise.source]


def _t_estimate(values: list[float], noise: Noise, n: int, method: str) -> Estimate:
    """Mean of ``values`` with a t interval, SE = noise sd / sqrt(n)."""
    mean = float(np.mean(values))
    se = noise.sd / math.sqrt(n) if noise.df >= 1 else NAN
    lo, hi = t_interval(mean, se, noise.df)
    why = "" if math.isfinite(lo) else "not estimable: no seed or condition spread"
    return Estimate(mean, lo, hi, why, method, se)


def _where(sel: pd.DataFrame, where: dict[str, Any], parts: Parts) -> pd.DataFrame:
    """The rows of ``sel`` with the settings ``analysis.claim.where`` names (all without it)."""
    missing = [key for key in where if key not in sel.columns]
    if missing:  # runs of an older harness that did not log the key
        parts.say(f"No paired change: the runs do not log `{missing[0]}` "
                  "(`analysis.claim.where`).")
        return sel.iloc[0:0]
    sel = rows_where(sel, where)
    if where:
        parts.say(f"The paired changes read only the runs with {where_text(where)} (`analysis."
                  "claim.where`: the setting the claim is made at); every run's final loss is "
                  "in the final-loss figure and final_losses.csv.")
    return sel


def paired_changes(d: Design, parts: Parts) -> None:
    """Final-loss change of each arm over its paired baseline runs (same condition, seed), on
    the runs ``analysis.claim.where`` names."""
    sel = _where(d.runs.frame[d.runs.frame["selected"]], d.where, parts)
    key = ["condition", "seed"]
    cols = [REPORTED, "flops"]
    base_runs = sel[sel["arm_label"] == d.base].groupby(key)[cols].mean()
    budget = sel[sel["arm_label"] == d.base].groupby(key)["budget"].first()
    for label in d.order:
        if label == d.base:
            continue
        mine = sel[sel["arm_label"] == label].groupby(key)[cols].mean()
        both = (mine / base_runs - 1).dropna(subset=[REPORTED])
        ref = reference(d.runs.arm_column, d.runs.value_of(label), d.runs.value_of(d.base))
        if both.empty:
            parts.say(f"{label}: no run has a {d.base} run with the same settings and seed to "
                      "compare final val loss with.", ref)
            continue
        order = base_runs.loc[both.index, "flops"].sort_values(kind="stable").index
        pairs = [Pair(str(c), int(s), str(budget.loc[(c, s)]),
                      float(both.loc[(c, s), REPORTED]), float(both.loc[(c, s), "flops"]))
                 for c, s in order]
        change = paired_change(label, d.base, pairs)
        parts.changes.append(change)
        flops = float(np.mean([p.rel_flops for p in pairs]))
        cost = (f", at {flops:+.2%} training FLOPs" if abs(flops) >= 5e-5 else
                ", at equal training FLOPs")
        parts.say(f"Paired by condition and seed: {paired_text(change)}{cost}.", ref)
    if parts.changes:
        parts.tables["final_loss_changes"] = pd.concat([c.table() for c in parts.changes],
                                                       ignore_index=True)
        parts.tables["paired_changes"] = pd.DataFrame([c.summary_row() for c in parts.changes])


__all__ = ["multipliers", "paired_changes", "sparsity_law", "target_losses"]
