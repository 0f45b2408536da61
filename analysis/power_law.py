"""Loss against compute: L(C) = E + A C^-alpha, for one curve or several with a shared exponent.

The general model (``fit_power_curves``) has one amplitude per arm k and a floor that is either
shared or per arm, with a single exponent:

    L_i = E_{k(i)} + A_{k(i)} C_i^-alpha      (E = 0 without a floor)

For fixed alpha the model is linear in (E, A), so the fit is by variable projection (Golub &
Pereyra 1973; for scaling laws Czech et al. 2026, "Problems with Chinchilla Approach 2",
Open-Athena/vpnls): a 1-D grid over alpha with (E, A) >= 0 from NNLS on relative residuals, then
L-BFGS on the robust objective sum_i h_delta(log pred_i - log L_i) (Huber, delta = 1e-3 as in
Hoffmann et al. 2022) from the best grid cells, with E = exp(e) and A = exp(a) so that both stay
positive. Bootstrap replicates are refitted from the point estimate, all in one batch
(``analysis.fitcore.batched_lbfgs``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import nnls

from analysis.fitcore import (
    DEFAULT_HUBER_DELTA,
    BootCheck,
    FitError,
    FloatArray,
    GoodnessOfFit,
    Interval,
    batched_lbfgs,
    bootstrap_weights,
    checked_intervals,
    distinct_resamples,
    goodness_of_fit,
    group_codes,
    huber,
    positive_array,
    same_length,
)

_ALPHA_RANGE = (1e-4, 10.0)
"""An exponent outside this range is not identified by the data (FitError)."""
_ALPHA_GRID = np.geomspace(2e-3, 4.0, 240)
"""Variable-projection grid over alpha (log-spaced)."""


@dataclass(frozen=True)
class PowerCurves:
    """Point estimate of L = E_k + A_k C^-alpha for arms k (``fit_power_curves``; no intervals).

    ``theta`` is the internal parameter vector (floors, log amplitudes at the reference compute
    exp(c0), alpha); bootstrap refits start from it.
    """

    arms: tuple[Hashable, ...]
    E: tuple[float, ...]
    A: tuple[float, ...]
    alpha: float
    gof: GoodnessOfFit
    theta: tuple[float, ...]
    c0: float
    floor: bool
    shared_floor: bool

    def predict(self, C: ArrayLike, arm: int = 0) -> FloatArray:
        """L(C) of arm index ``arm``."""
        return self.E[arm] + self.A[arm] * np.asarray(C, dtype=np.float64) ** -self.alpha

    def compute_for_loss(self, L_star: ArrayLike, arm: int = 0) -> FloatArray:
        """C(L*) = ((L* - E) / A)^(-1/alpha); NaN where L* <= E (below the floor)."""
        excess = np.asarray(L_star, dtype=np.float64) - self.E[arm]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(excess > 0, (excess / self.A[arm]) ** (-1.0 / self.alpha), np.nan)


@dataclass(frozen=True)
class PowerLawFit:
    """L(C) = E + A C^-alpha (``floor``) or L = A C^-alpha, with 95% bootstrap intervals ``ci``
    (keys "E", "A", "alpha"; empty when n_boot = 0 or ``boot`` is not estimable) from
    ``n_boot_ok`` successful refits."""

    E: float
    A: float
    alpha: float
    floor: bool
    ci: Mapping[str, Interval]
    gof: GoodnessOfFit
    n_boot_ok: int
    curves: PowerCurves = field(repr=False)
    boot: BootCheck = field(default_factory=lambda: BootCheck(0, 0, 0))

    def predict(self, C: ArrayLike) -> FloatArray:
        return self.curves.predict(C)

    def compute_for_loss(self, L_star: ArrayLike) -> FloatArray:
        return self.curves.compute_for_loss(L_star)


@dataclass(frozen=True)
class ExtrapolationCheck:
    """A fit without the ``held_out_runs`` largest-compute runs, and its error on them:
    rel_error_i = (L_pred_i - L_i) / L_i for the held-out points."""

    fit: PowerLawFit
    C: tuple[float, ...]
    L: tuple[float, ...]
    L_pred: tuple[float, ...]
    rel_error: tuple[float, ...]
    mean_abs_rel_error: float
    max_abs_rel_error: float
    held_out_runs: int


class _Curves:
    """The batched objective of the curves model for a data set (module docstring).

    theta rows: (log E_j for each floor j, log A'_k for each arm k, alpha), with A'_k the
    amplitude at the reference compute exp(c0). Value: sum_i W_i h_delta(log pred_i - log L_i),
    W: one row of point weights per batch row (None: all ones).
    """

    def __init__(self, u: FloatArray, lL: FloatArray, arm: NDArray[np.int64], k: int,
                 n_floor: int, delta: float, W: FloatArray | None = None) -> None:
        self.u, self.lL, self.k, self.n_floor, self.delta, self.W = u, lL, k, n_floor, delta, W
        self.arm_1h = np.eye(k)[arm]
        self.floor_1h = (np.eye(k)[arm] if n_floor > 1 else np.ones((len(u), 1)))[:, :n_floor]

    def __call__(self, theta: FloatArray, rows: NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
        nf, k = self.n_floor, self.k
        W = np.ones((1, len(self.u))) if self.W is None else self.W[rows]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            floor = np.exp(theta[:, :nf]) @ self.floor_1h.T
            amp = np.exp(theta[:, nf:nf + k] @ self.arm_1h.T - theta[:, -1:] * self.u)
            pred = floor + amp
            h, psi = huber(np.log(pred) - self.lL, self.delta)
            f = np.sum(W * h, axis=1)
            q = W * psi / pred
            grad = np.concatenate([np.exp(theta[:, :nf]) * (q @ self.floor_1h),
                                   (q * amp) @ self.arm_1h, -(q * amp) @ self.u[:, None]], axis=1)
        bad = ~(np.isfinite(f) & np.all(np.isfinite(grad), axis=1))
        f[bad], grad[bad] = np.inf, 0.0
        return f, grad


def _vp_starts(u: FloatArray, L: FloatArray, arm: NDArray[np.int64], k: int,
               n_floor: int) -> FloatArray:
    """Variable projection: for each alpha on the grid, (E, A) >= 0 by NNLS on relative
    residuals, min sum_i ((E + A_k exp(-alpha u_i)) / L_i - 1)^2; rows of theta (log scale)."""
    n = len(u)
    tiny = 1e-6 * L.min()
    rows = []
    for alpha in _ALPHA_GRID:
        X = np.zeros((n, n_floor + k))
        if n_floor:
            X[np.arange(n), arm if n_floor > 1 else 0] = 1.0
        X[np.arange(n), n_floor + arm] = np.exp(-alpha * u)
        coef = nnls(X / L[:, None], np.ones(n))[0]
        rows.append(np.concatenate([np.log(np.maximum(coef, tiny)), [alpha]]))
    return np.asarray(rows)


def _prepare(C: ArrayLike, L: ArrayLike, arm: ArrayLike | None, floor: bool,
             shared_floor: bool
             ) -> tuple[FloatArray, FloatArray, NDArray[np.int64], NDArray[Any], int]:
    """Validated (C, L, arm codes, arm labels, number of floors); FitError if not identified."""
    C_, L_ = positive_array("C", C), positive_array("L", L)
    n = same_length(C=C_, L=L_)
    labels = np.zeros(n, dtype=np.int64) if arm is None else np.asarray(arm).ravel()
    if len(labels) != n:
        raise FitError(f"arm has {len(labels)} entries for {n} points")
    arms, codes = np.unique(labels, return_inverse=True)
    k = len(arms)
    n_floor = 0 if not floor else (1 if shared_floor else k)
    if n < n_floor + k + 2:
        raise FitError(f"{n} points for {n_floor + k + 1} parameters")
    if np.ptp(np.log(L_)) < 1e-12:
        raise FitError("loss is constant: no scaling to fit")
    need = 3 if n_floor > 1 else 2
    for j in range(k):
        distinct = len(np.unique(C_[codes == j]))
        if distinct < need:
            raise FitError(f"arm {arms[j]!r} has {distinct} distinct compute values (< {need})")
    if floor and len(np.unique(C_)) < 3:
        raise FitError("fewer than 3 distinct compute values: floor, A and alpha not identified")
    return C_, L_, codes.astype(np.int64), arms, n_floor


def fit_power_curves(C: ArrayLike, L: ArrayLike, arm: ArrayLike | None = None, *,
                     floor: bool = True, shared_floor: bool = True,
                     delta: float = DEFAULT_HUBER_DELTA, strict: bool = True) -> PowerCurves:
    """Fit L_i = E_{k(i)} + A_{k(i)} C_i^-alpha with one alpha for all arms (module docstring).

    ``arm``: arm label per point (one arm when None); ``shared_floor``: one E for all arms;
    ``floor=False`` drops E. Raises :class:`FitError` when not identified: too few points or
    distinct compute values, constant loss, non-finite input, and (``strict``) alpha at its
    bound, a floor E at 0 or an amplitude A at 0.
    """
    C_, L_, codes, arms, n_floor = _prepare(C, L, arm, floor, shared_floor)
    k = len(arms)
    lC = np.log(C_)
    c0 = float(lC.mean())
    problem = _Curves(lC - c0, np.log(L_), codes, k, n_floor, delta)
    starts = _vp_starts(lC - c0, L_, codes, k, n_floor)
    f0, _ = problem(starts, np.arange(len(starts)))
    if not np.any(np.isfinite(f0)):
        raise FitError("no alpha on the grid gives a finite objective")
    best = starts[np.argsort(f0)[:3]]
    thetas, fs = batched_lbfgs(problem, best, ftol=1e-13, gtol=1e-11, max_iter=5000)
    theta = thetas[np.argmin(fs)]
    if not (np.all(np.isfinite(theta)) and np.isfinite(fs.min())):
        raise FitError("fit did not converge to finite parameters")
    curves = _curves_from(theta, arms, c0, n_floor, floor, shared_floor)
    if strict:
        lo, hi = _ALPHA_RANGE
        if not lo < curves.alpha < hi:
            raise FitError(f"alpha = {curves.alpha:.4g} outside {_ALPHA_RANGE}: not identified")
        if n_floor and min(curves.E) <= 1e-4 * L_.min():
            raise FitError("floor E at its bound 0: not identified (fit with floor=False)")
        if np.any(theta[n_floor:n_floor + k] < np.log(1e-8 * L_.min())):
            raise FitError("an amplitude A is ~0: loss does not decrease with compute")
    pred = np.asarray(curves.E)[codes] + np.asarray(curves.A)[codes] * C_**-curves.alpha
    return replace(curves, gof=goodness_of_fit(np.log(L_), np.log(pred), float(fs.min())))


def _curves_from(theta: FloatArray, arms: NDArray[Any], c0: float, n_floor: int, floor: bool,
                 shared_floor: bool) -> PowerCurves:
    k = len(arms)
    alpha = float(theta[-1])
    E = np.broadcast_to(np.exp(theta[:n_floor]), (k,)) if n_floor else np.zeros(k)
    A = np.exp(theta[n_floor:n_floor + k] + alpha * c0)
    nan_gof = GoodnessOfFit(0, float("nan"), float("nan"), float("nan"))
    return PowerCurves(tuple(arms.tolist()), tuple(map(float, E)), tuple(map(float, A)), alpha,
                       nan_gof, tuple(map(float, theta)), c0, floor, shared_floor)


def refit_power_curves(curves: PowerCurves, C: ArrayLike, L: ArrayLike, arm: ArrayLike | None,
                       W: FloatArray, delta: float = DEFAULT_HUBER_DELTA) -> list[PowerCurves]:
    """Refit ``curves`` to the data weighted by each row of W (bootstrap multiplicities).

    All rows run as one batched L-BFGS from the point estimate ``curves.theta``. Returns one
    :class:`PowerCurves` per row (non-finite parameters mark a failed refit; bounds are not
    enforced, so replicates at a bound still count).
    """
    C_, L_ = np.asarray(C, dtype=np.float64).ravel(), np.asarray(L, dtype=np.float64).ravel()
    labels = np.zeros(len(C_), dtype=np.int64) if arm is None else np.asarray(arm).ravel()
    arms, codes = np.unique(labels, return_inverse=True)
    n_floor = 0 if not curves.floor else (1 if curves.shared_floor else len(arms))
    problem = _Curves(np.log(C_) - curves.c0, np.log(L_), codes.astype(np.int64), len(arms),
                      n_floor, delta, W)
    x0 = np.tile(np.asarray(curves.theta), (len(W), 1))
    thetas, _ = batched_lbfgs(problem, x0, ftol=1e-13, gtol=1e-11, max_iter=5000)
    return [_curves_from(t, arms, curves.c0, n_floor, curves.floor, curves.shared_floor)
            for t in thetas]


def identified_rows(W: FloatArray, C: ArrayLike, arm: ArrayLike | None, floor: bool,
                    shared_floor: bool = True) -> NDArray[np.bool_]:
    """Which bootstrap rows of ``W`` (multiplicities) identify the model, by the rules of
    :func:`fit_power_curves` applied to the points each row draws: enough distinct compute
    values per arm and overall, and more distinct points than parameters."""
    C_ = np.asarray(C, dtype=np.float64).ravel()
    labels = np.zeros(len(C_), dtype=np.int64) if arm is None else np.asarray(arm).ravel()
    arms, codes = np.unique(labels, return_inverse=True)
    k = len(arms)
    n_floor = 0 if not floor else (1 if shared_floor else k)
    # a shared floor and exponent leave one amplitude per arm: one point identifies it
    need = 3 if n_floor > 1 else (1 if k > 1 else 2)
    drawn = W > 0
    ok = drawn.sum(axis=1) >= n_floor + k + 2
    for row in range(len(W)):
        if not ok[row]:
            continue
        c, g = C_[drawn[row]], codes[drawn[row]]
        per_arm = [len(np.unique(c[g == j])) for j in range(k)]
        ok[row] = min(per_arm) >= need and (not floor or len(np.unique(c)) >= 3)
    return ok


def fit_power_law(C: ArrayLike, L: ArrayLike, floor: bool = True, groups: ArrayLike | None = None,
                  n_boot: int = 200, *, seed: int = 0, strata: ArrayLike | None = None,
                  unit: str = "runs within each arm",
                  delta: float = DEFAULT_HUBER_DELTA) -> PowerLawFit:
    """Fit L = E + A C^-alpha (``floor``) or L = A C^-alpha, robustly in log space.

    Objective: sum_i h_delta(log(E + A C_i^-alpha) - log L_i), Huber with ``delta`` (1e-3 as in
    Hoffmann et al. 2022 / Besiroglu et al. 2024), solved by variable projection (module
    docstring). ``groups``: run id per point; bootstrap (``n_boot`` replicates, ``seed``;
    Efron & Tibshirani 1993) resamples whole runs, or points when ``groups`` is None, within
    each of ``strata`` when given (Davison & Hinkley 1997, sec. 3.2.3). A replicate
    that does not identify the law fails; ``boot`` says how many did and whether the intervals
    are estimable (``analysis.fitcore.BootCheck``). Raises :class:`FitError` when the fit is not
    identified: too few points, fewer than 3 distinct C with a floor, constant loss, non-finite
    input, alpha or E at a bound.
    """
    curves = fit_power_curves(C, L, floor=floor, delta=delta)
    n = len(np.asarray(C).ravel())
    names = ["E", "A", "alpha"] if floor else ["A", "alpha"]
    ci: dict[str, Interval] = {}
    n_ok = 0
    boot = BootCheck(0, 0, 0, unit)
    if n_boot > 0:
        codes = group_codes(groups, n)
        cells = None if strata is None else group_codes(strata, n)
        W = bootstrap_weights(codes, n_boot, seed, cells)
        reps = refit_power_curves(curves, C, L, None, W, delta)
        samples = np.array([[r.E[0], r.A[0], r.alpha] if floor else [r.A[0], r.alpha]
                            for r in reps])
        ok = np.all(np.isfinite(samples), axis=1) & identified_rows(W, C, None, floor)
        n_ok = int(ok.sum())
        boot = BootCheck(n_boot, n_boot - n_ok, distinct_resamples(codes, cells), unit)
        ci = checked_intervals(samples, names, ok, boot)
    return PowerLawFit(curves.E[0], curves.A[0], curves.alpha, floor, ci, curves.gof, n_ok, curves,
                       boot)


def extrapolation_check(C: ArrayLike, L: ArrayLike, groups: ArrayLike | None = None,
                        holdout: int = 1, *, floor: bool = True,
                        delta: float = DEFAULT_HUBER_DELTA) -> ExtrapolationCheck:
    """Fit L(C) without the ``holdout`` runs of largest compute, predict their points.

    A run's compute is its largest C (the end of its curve); without ``groups`` each point is a
    run. Reports rel_error = (L_pred - L) / L on the held-out points. Raises :class:`FitError`
    if ``holdout`` leaves no run out or too few to fit.
    """
    C_, L_ = positive_array("C", C), positive_array("L", L)
    n = same_length(C=C_, L=L_)
    codes = group_codes(groups, n)
    run_max = np.array([C_[codes == g].max() for g in range(codes.max() + 1)])
    if not 1 <= holdout < len(run_max):
        raise FitError(f"holdout = {holdout} must leave out 1..{len(run_max) - 1} of "
                       f"{len(run_max)} runs")
    held = np.isin(codes, np.argsort(run_max)[-holdout:])
    fit = fit_power_law(C_[~held], L_[~held], floor=floor, n_boot=0, delta=delta)
    pred = fit.predict(C_[held])
    rel = (pred - L_[held]) / L_[held]
    return ExtrapolationCheck(fit, tuple(C_[held].tolist()), tuple(L_[held].tolist()),
                              tuple(pred.tolist()), tuple(rel.tolist()),
                              float(np.mean(np.abs(rel))), float(np.max(np.abs(rel))), holdout)
