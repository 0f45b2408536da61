"""Compute multipliers between arms: the K2 sparsity law and C_b(L*) / C_a(L*) frontiers.

Kimi K2 report (arXiv 2507.20534, section 2.3) sweeps sparsity (routed / active experts) at fixed
activated parameters and reports, at a target loss L*, how many times fewer FLOPs one sparsity
needs than another ("at validation loss 1.5, sparsity 48 needs 1.69x, 1.39x and 1.15x fewer FLOPs
than sparsity 8, 16 and 32"). Separate per-arm fits of such ratios are ill-conditioned, so
``fit_sparsity_law`` fits all arms jointly with shared exponent and floor and a per-arm compute
multiplier m_s (m = 1 for the reference arm; cf. Volkova et al. 2026 for per-arm multipliers):

    L = E + A (m_s C)^-alpha,

which is L = E + A_s C^-alpha with A_s = A m_s^-alpha, fitted by variable projection
(``analysis.power_law``). Under this law the FLOP ratio at any L* > E is
C_S0(L*) / C_S(L*) = m_S / m_S0. ``compute_multiplier`` instead reads the ratio off two fitted
frontiers L(C) = E + A C^-alpha, as a function of L*. Intervals resample runs within each arm
(whole seeds, each with all its runs, when the frames carry a ``seed`` column),
Efron & Tibshirani 1993; each result carries its :class:`~analysis.fitcore.BootCheck`, and a
quantity whose bootstrap failed too often has no interval (not estimable).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from analysis.fitcore import (
    DEFAULT_HUBER_DELTA,
    BootCheck,
    FitError,
    FloatArray,
    GoodnessOfFit,
    Interval,
    bootstrap_weights,
    checked_intervals,
    distinct_resamples,
    percentile_intervals,
)
from analysis.power_law import (
    PowerCurves,
    fit_power_curves,
    identified_rows,
    refit_power_curves,
)


@dataclass(frozen=True)
class FlopRatio:
    """``arm`` reaches loss ``L_star`` with ``ratio`` times fewer FLOPs than ``baseline``:
    ratio = C_baseline(L*) / C_arm(L*) = m_arm / m_baseline, with its 95% interval ``ci``.
    ``C_arm`` / ``C_baseline``: the FLOPs each needs for L* (NaN when no L* was given);
    ``extrapolated``: L* lies outside the losses observed in either arm."""

    arm: Hashable
    baseline: Hashable
    ratio: float
    ci: Interval | None
    L_star: float
    C_arm: float
    C_baseline: float
    extrapolated: bool


@dataclass(frozen=True, eq=False)
class SparsityLawFit:
    """L = E + A (m_s C)^-alpha over arms s (module docstring), m = 1 for ``reference``.

    ``multipliers``: m_s per arm; ``ci``: 95% intervals for "E", "A", "alpha" and, per arm,
    ``multiplier_ci``; ``table``: a :class:`FlopRatio` for every ordered pair (arm after baseline
    in sorted arm order). ``loss_range``: observed [min, max] loss per arm.
    ``log_m_samples``: bootstrap replicates of log m_s (columns in ``arms`` order), from which
    :meth:`ratio` gives any other pair.
    """

    arms: tuple[Hashable, ...]
    reference: Hashable
    E: float
    A: float
    alpha: float
    multipliers: Mapping[Hashable, float]
    ci: Mapping[str, Interval]
    multiplier_ci: Mapping[Hashable, Interval]
    table: tuple[FlopRatio, ...]
    gof: GoodnessOfFit
    n_boot_ok: int
    loss_range: Mapping[Hashable, Interval]
    log_m_samples: FloatArray = field(repr=False)
    boot: BootCheck = field(default_factory=lambda: BootCheck(0, 0, 0))

    def compute_for_loss(self, L_star: float, arm: Hashable) -> float:
        """C_s(L*) = ((L* - E) / A)^(-1/alpha) / m_s; NaN at or below the floor E."""
        if L_star <= self.E:
            return float("nan")
        return float(((L_star - self.E) / self.A) ** (-1.0 / self.alpha) / self.multipliers[arm])

    def ratio(self, arm: Hashable, baseline: Hashable, L_star: float = float("nan")) -> FlopRatio:
        """FLOP ratio C_baseline(L*) / C_arm(L*) = m_arm / m_baseline with its interval."""
        i, j = self.arms.index(arm), self.arms.index(baseline)
        ci = None
        if len(self.log_m_samples) and self.boot.estimable:
            diff = self.log_m_samples[:, [i]] - self.log_m_samples[:, [j]]
            ci = percentile_intervals(np.exp(diff), ["ratio"])["ratio"]
        seen = all(L_star in self.loss_range[a] for a in (arm, baseline))
        return FlopRatio(arm, baseline, self.multipliers[arm] / self.multipliers[baseline], ci,
                         L_star, self.compute_for_loss(L_star, arm),
                         self.compute_for_loss(L_star, baseline),
                         bool(np.isfinite(L_star) and not seen))


def _resampling(df: pd.DataFrame, arm: str = "arm"
                ) -> tuple[NDArray[np.int64], NDArray[np.int64], str]:
    """Unit codes, strata (the arm) and the unit's name: runs within each arm, or, with a
    ``seed`` column, whole seeds (each with all its runs) within each arm."""
    unit = "seed" if "seed" in df.columns else "run"
    codes = pd.factorize(df[arm].astype(str) + "\x1f" + df[unit].astype(str))[0]
    name = "seeds within each arm" if unit == "seed" else "runs within each arm"
    return codes, pd.factorize(df[arm].astype(str))[0], name


def _columns(frame: pd.DataFrame, needed: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise FitError(f"frame lacks columns {missing} (has {list(frame.columns)})")
    return frame.dropna(subset=list(needed)).reset_index(drop=True)


def fit_sparsity_law(frame: pd.DataFrame, *, reference: Hashable | None = None,
                     L_star: float | None = None, n_boot: int = 200, seed: int = 0,
                     delta: float = DEFAULT_HUBER_DELTA) -> SparsityLawFit:
    """Joint fit of L = E + A (m_s C)^-alpha over the arms of ``frame`` (module docstring).

    ``frame``: columns ``run``, ``arm`` (e.g. the sparsity), ``flops``, ``loss``: final points,
    or points along curves that are valid at every step (constant LR or WSD cooldowns, not the
    middle of a cosine run; Hagele et al. 2024). ``reference``: the arm with m = 1 (default:
    the first in sorted order). ``L_star``: the target loss of the table (must exceed the
    fitted floor E; the ratios themselves do not depend on it under this law). Intervals:
    ``n_boot`` replicates resampling runs within each arm. Huber objective in log space with
    ``delta``. Raises :class:`FitError` if columns are missing, there are fewer than 2 arms,
    the joint fit is not identified (see ``fit_power_curves``), or L_star <= E.
    """
    df = _columns(frame, ("run", "arm", "flops", "loss"))
    arms_in = np.asarray(df["arm"])
    if len(np.unique(arms_in)) < 2:
        raise FitError("a sparsity law needs >= 2 arms")
    C, L = df["flops"].to_numpy(float), df["loss"].to_numpy(float)
    curves = fit_power_curves(C, L, arms_in, floor=True, shared_floor=True, delta=delta)
    arms = curves.arms
    ref = arms[0] if reference is None else reference
    if ref not in arms:
        raise FitError(f"reference arm {ref!r} is not among {list(arms)}")
    r = arms.index(ref)
    E, A = curves.E[0], curves.A[r]
    if L_star is not None and L_star <= E:
        raise FitError(f"L* = {L_star} is at or below the fitted floor E = {E:.4g}")

    def log_m(c: PowerCurves) -> FloatArray:
        amplitudes = np.asarray(c.A, dtype=np.float64)
        return np.asarray((np.log(amplitudes[r]) - np.log(amplitudes)) / c.alpha)

    lm = log_m(curves)
    samples = np.empty((0, len(arms)))
    ci: dict[str, Interval] = {}
    m_ci: dict[Hashable, Interval] = {}
    boot = BootCheck(0, 0, 0)
    if n_boot > 0:
        codes, strata, unit = _resampling(df)
        W = bootstrap_weights(codes, n_boot, seed, strata=strata)
        reps = refit_power_curves(curves, C, L, arms_in, W, delta)
        par = np.array([[c.E[0], c.A[r], c.alpha] for c in reps])
        samples = np.array([log_m(c) for c in reps])
        ok = (np.all(np.isfinite(par), axis=1) & np.all(np.isfinite(samples), axis=1)
              & identified_rows(W, C, arms_in, floor=True, shared_floor=True))
        boot = BootCheck(n_boot, int(n_boot - ok.sum()), distinct_resamples(codes, strata), unit)
        ci = checked_intervals(par, ["E", "A", "alpha"], ok, boot)
        samples = samples[ok]
        names = [str(a) for a in arms]
        if boot.estimable:
            ivs = percentile_intervals(np.exp(samples), names)
            m_ci = {a: ivs[name] for a, name in zip(arms, names, strict=True)}
    loss_range = {a: Interval(float(g.min()), float(g.max()))
                  for a, g in df.groupby("arm")["loss"]}
    fit = SparsityLawFit(arms, ref, E, A, curves.alpha,
                         {a: float(np.exp(v)) for a, v in zip(arms, lm, strict=True)}, ci, m_ci,
                         (), curves.gof, len(samples), loss_range, samples, boot)
    star = float("nan") if L_star is None else float(L_star)
    return replace(fit, table=tuple(fit.ratio(arms[i], arms[j], star)
                                    for j in range(len(arms)) for i in range(j + 1, len(arms))))


@dataclass(frozen=True)
class MultiplierCurve:
    """C_b(L*) / C_a(L*) at each requested L*, read off fitted frontiers L = E + A C^-alpha.

    ``ratio`` > 1: arm a needs fewer FLOPs than b. Entries are NaN where ``reason`` is not
    empty (L* at or below a floor, or C(L*) beyond the fitted range by more than the allowed
    extrapolation); ``lo`` / ``hi``: 95% bootstrap interval (NaN without bootstrap).
    """

    L_star: tuple[float, ...]
    ratio: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    reason: tuple[str, ...]
    fit_a: PowerCurves = field(repr=False)
    fit_b: PowerCurves = field(repr=False)
    shared_exponent: bool
    n_boot_ok: int
    frontier: str = "separate"  # which of FRONTIERS was fitted
    boot: tuple[BootCheck, ...] = ()  # per L*: replicates failed, distinct resamples
    passed_over: tuple[str, ...] = ()  # more flexible frontiers whose bootstrap was not estimable
    se_log: tuple[float, ...] = ()  # per L*: bootstrap sd of log ratio (NaN if not estimable)


FRONTIERS: dict[str, str] = {
    "separate": "separate exponents",
    "shared": "a shared exponent",
    "shared_floor": "a shared exponent and floor",
    "no_floor": "a shared exponent and no floor (pure power laws)",
}
"""Frontier models, most flexible first: each arm its own L = E + A C^-alpha; one alpha with
per-arm E and A; one alpha and one E (the joint form of the K2 sparsity law); L = A_k C^-alpha."""


def _frontiers(ca: pd.DataFrame, cb: pd.DataFrame, model: str,
               delta: float) -> tuple[PowerCurves, PowerCurves]:
    if model == "separate":
        return (fit_power_curves(ca["flops"], ca["loss"], delta=delta),
                fit_power_curves(cb["flops"], cb["loss"], delta=delta))
    if model == "no_floor" and min(ca["flops"].nunique(), cb["flops"].nunique()) < 3:
        raise FitError("fewer than 3 distinct compute values in an arm")
    both = pd.concat([ca, cb])
    arm = np.r_[np.zeros(len(ca), int), np.ones(len(cb), int)]
    joint = fit_power_curves(both["flops"], both["loss"], arm, floor=model != "no_floor",
                             shared_floor=model == "shared_floor", delta=delta)
    return joint, joint


def compute_multiplier(curves_a: pd.DataFrame, curves_b: pd.DataFrame, L_star: ArrayLike, *,
                       shared_exponent: bool | None = None, n_boot: int = 200, seed: int = 0,
                       max_extrapolation: float = 0.5,
                       delta: float = DEFAULT_HUBER_DELTA) -> MultiplierCurve:
    """C_b(L*) / C_a(L*) for each L* in ``L_star``, with C_x(L*) = ((L* - E_x)/A_x)^(-1/alpha_x).

    ``curves_a`` / ``curves_b``: columns ``run``, ``flops``, ``loss`` (and ``seed``, to
    resample whole seeds). Each arm gets its own
    L = E + A C^-alpha, or (``shared_exponent``) one alpha with per-arm E and A; None tries
    the ``FRONTIERS`` in order, most flexible first, and keeps the first that is identified on
    the points and whose bootstrap is estimable at some answered L* (the ones passed over are
    named in ``passed_over``; if none is estimable the first identified one is kept, with no
    intervals). An L* is answered (else NaN and a reason) only if it is above both floors and
    each C(L*) lies within the arm's compute range widened by ``max_extrapolation`` decades on
    each side. Intervals: ``n_boot`` replicates resampling runs within each arm (Efron &
    Tibshirani 1993); a replicate fails when it does not identify its frontier or gives no
    finite ratio, and ``boot`` (per L*) says whether the interval is estimable. Raises
    :class:`FitError` if columns are missing or no frontier can be fitted.
    """
    ca, cb = (_columns(c, ("run", "flops", "loss")) for c in (curves_a, curves_b))
    stars = np.atleast_1d(np.asarray(L_star, dtype=np.float64))
    models = (list(FRONTIERS) if shared_exponent is None
              else ["shared"] if shared_exponent else ["separate"])
    errors: list[str] = []
    first: MultiplierCurve | None = None
    passed: list[str] = []
    for model in models:
        try:
            fa, fb = _frontiers(ca, cb, model, delta)
        except FitError as e:
            errors.append(f"{FRONTIERS[model]}: {e}")
            continue
        curve = _read_off(ca, cb, fa, fb, model, stars, n_boot, seed, max_extrapolation, delta)
        first = first or curve
        answered = [b for b, why in zip(curve.boot, curve.reason, strict=True) if not why]
        if n_boot <= 0 or not answered or any(b.estimable for b in answered):
            return replace(curve, passed_over=tuple(passed))
        passed.append(model)
    if first is None:
        raise FitError("; ".join(errors) if len(errors) > 1 else errors[0].split(": ", 1)[1])
    return first  # none estimable: the most flexible identified one, without intervals


def _reasons(ca: pd.DataFrame, cb: pd.DataFrame, fa: PowerCurves, fb: PowerCurves, ia: int,
             ib: int, stars: FloatArray, widen: float) -> list[str]:
    """Per L*: why it is not answered (below a floor, or beyond the widened data range)."""
    reasons = []
    for s in stars:
        why = []
        for name, f, i, c in (("a", fa, ia, ca), ("b", fb, ib, cb)):
            need = float(f.compute_for_loss(s, i))
            c_lo, c_hi = c["flops"].min() / widen, c["flops"].max() * widen
            if not np.isfinite(need):
                why.append(f"L* = {s:.4g} is at or below the floor of {name} (E = {f.E[i]:.4g})")
            elif not c_lo <= need <= c_hi:
                why.append(f"{name} needs C = {need:.3g}, outside its data range widened to "
                           f"[{c_lo:.3g}, {c_hi:.3g}]")
        reasons.append("; ".join(why))
    return reasons


def _read_off(ca: pd.DataFrame, cb: pd.DataFrame, fa: PowerCurves, fb: PowerCurves, model: str,
              stars: FloatArray, n_boot: int, seed: int, max_extrapolation: float,
              delta: float) -> MultiplierCurve:
    """The ratio at each L* under one frontier model, with its checked bootstrap."""
    shared = model != "separate"
    ia, ib = (0, 1) if shared else (0, 0)
    ratio = fb.compute_for_loss(stars, ib) / fa.compute_for_loss(stars, ia)
    reasons = _reasons(ca, cb, fa, fb, ia, ib, stars, 10.0**max_extrapolation)
    valid = np.array([not r for r in reasons])
    ratio = np.where(valid, ratio, np.nan)
    lo, hi = np.full(len(stars), np.nan), np.full(len(stars), np.nan)
    se = np.full(len(stars), np.nan)
    boots: list[BootCheck] = [BootCheck(0, 0, 0)] * len(stars)
    n_ok = 0
    if n_boot > 0:
        both = pd.concat([ca.assign(_arm=0), cb.assign(_arm=1)], ignore_index=True)
        codes, strata, unit = _resampling(both, "_arm")
        W = bootstrap_weights(codes, n_boot, seed, strata=strata)
        na = len(ca)
        if shared:
            reps = refit_power_curves(fa, both["flops"], both["loss"], both["_arm"], W, delta)
            pairs = [(r, r) for r in reps]
            ident = identified_rows(W, both["flops"], both["_arm"], floor=model != "no_floor",
                                    shared_floor=model == "shared_floor")
        else:
            ra = refit_power_curves(fa, ca["flops"], ca["loss"], None, W[:, :na], delta)
            rb = refit_power_curves(fb, cb["flops"], cb["loss"], None, W[:, na:], delta)
            pairs = list(zip(ra, rb, strict=True))
            ident = (identified_rows(W[:, :na], ca["flops"], None, floor=True)
                     & identified_rows(W[:, na:], cb["flops"], None, floor=True))
        rs = np.array([b.compute_for_loss(stars, ib) / a.compute_for_loss(stars, ia)
                       for a, b in pairs])
        good = np.isfinite(rs) & (rs > 0) & ident[:, None]
        distinct = distinct_resamples(codes, strata)
        boots = [BootCheck(n_boot, int(n_boot - good[:, j].sum()), distinct, unit)
                 for j in range(len(stars))]
        n_ok = int(ident.sum())
        for j, b in enumerate(boots):
            if valid[j] and b.estimable:
                lo[j], hi[j] = np.percentile(rs[good[:, j], j], [2.5, 97.5])
                se[j] = float(np.std(np.log(rs[good[:, j], j]), ddof=1))
    return MultiplierCurve(tuple(stars.tolist()), tuple(ratio.tolist()), tuple(lo.tolist()),
                           tuple(hi.tolist()), tuple(reasons), fa, fb, shared, n_ok, model,
                           tuple(boots), (), tuple(se.tolist()))
