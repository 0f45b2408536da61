"""The routed-language-model law of Clark et al. 2022 ("Unified scaling laws for routed
language models", ICML; data and reference code: google-deepmind/scaling_laws_for_routing).

    log10 L(N, E) = a log10 N + b log10 Ê + c log10 N log10 Ê + d,
    1 / Ê = 1 / (E - 1 + (1/E_start - 1/E_max)^-1) + 1 / E_max,

with N the dense (activated) parameter count and E the number of experts (dense models: E = 1).
Ê saturates: Ê(1) = E_start, Ê ~ E - 1 + E_start while E << E_max, and Ê -> E_max as
E -> infinity. As in the reference notebook, E_start = 2^s and E_max = 2^m are fitted on a log2
scale, and the objective is the mean squared error in log10 space. E_start and E_max are poorly
identified (a long flat valley of the objective), so the fit is global: for fixed (s, m) the law
is linear in (a, b, c, d), so ordinary least squares on an (s, m) grid plus random (s, m) starts
seed a batched L-BFGS over all six parameters, and the lowest objective wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analysis.fitcore import (
    FitError,
    FloatArray,
    GoodnessOfFit,
    Interval,
    batched_lbfgs,
    bootstrap_intervals,
    bootstrap_weights,
    goodness_of_fit,
    group_codes,
    positive_array,
    same_length,
)

_LN2, _LN10 = np.log(2.0), np.log(10.0)
_NAMES = ("a", "b", "c", "d", "E_start", "E_max")


def saturating_experts(E: ArrayLike, E_start: ArrayLike, E_max: ArrayLike) -> FloatArray:
    """Ê = 1 / (1 / (E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max) (Clark et al. 2022)."""
    E_ = np.asarray(E, dtype=np.float64)
    start, top = np.asarray(E_start, dtype=np.float64), np.asarray(E_max, dtype=np.float64)
    return 1.0 / (1.0 / (E_ - 1.0 + 1.0 / (1.0 / start - 1.0 / top)) + 1.0 / top)


@dataclass(frozen=True)
class ClarkFit:
    """log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d with Ê(E; E_start, E_max);
    ``ci``: 95% bootstrap intervals for a, b, c, d, E_start, E_max (empty when n_boot = 0);
    ``gof.objective``: the MSE in log10 space."""

    a: float
    b: float
    c: float
    d: float
    E_start: float
    E_max: float
    ci: Mapping[str, Interval]
    gof: GoodnessOfFit
    n_boot_ok: int

    def predict(self, N: ArrayLike, E: ArrayLike) -> FloatArray:
        lN = np.log10(np.asarray(N, dtype=np.float64))
        lE = np.log10(saturating_experts(E, self.E_start, self.E_max))
        return 10.0 ** (self.a * lN + self.b * lE + self.c * lN * lE + self.d)


class _Objective:
    """Batched weighted MSE sum_i W_i r_i^2 / sum_i W_i, r = log10 pred - log10 L, in theta rows
    (a, b, c, d, s, m), with the analytic gradient through Ê; W: one row of point weights per
    batch row (None: all ones)."""

    def __init__(self, lN: FloatArray, E: FloatArray, lL: FloatArray,
                 W: FloatArray | None = None) -> None:
        self.lN, self.E, self.lL, self.W = lN, E, lL, W

    def __call__(self, theta: FloatArray, rows: NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
        a, b, c, d, s, m = (theta[:, j:j + 1] for j in range(6))
        W = np.ones((1, len(self.lL))) if self.W is None else self.W[rows]
        W = W / W.sum(axis=1, keepdims=True)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            inv_s, inv_m = 2.0**-s, 2.0**-m
            k = 1.0 / (inv_s - inv_m)
            inner = self.E - 1.0 + k
            v = 1.0 / inner + inv_m
            lE = -np.log10(v)
            r = a * self.lN + b * lE + c * self.lN * lE + d - self.lL
            f = np.sum(W * r * r, axis=1)
            q = 2.0 * W * r
            dv_dk = -1.0 / inner**2
            dlE_ds = -(dv_dk * k * k * _LN2 * inv_s) / (v * _LN10)
            dlE_dm = -(dv_dk * (-k * k * _LN2 * inv_m) - _LN2 * inv_m) / (v * _LN10)
            slope = b + c * self.lN
            grad = np.stack([q @ self.lN, (q * lE).sum(1), (q * self.lN * lE).sum(1), q.sum(1),
                             (q * slope * dlE_ds).sum(1), (q * slope * dlE_dm).sum(1)], axis=1)
        bad = ~(np.isfinite(f) & np.all(np.isfinite(grad), axis=1)) | (m[:, 0] <= s[:, 0])
        f[bad], grad[bad] = np.inf, 0.0
        return f, grad


def _ols_starts(lN: FloatArray, E: FloatArray, lL: FloatArray, s: FloatArray,
                m: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Least-squares (a, b, c, d) for each (s, m): theta rows and their MSE."""
    lE = np.log10(saturating_experts(E[None, :], 2.0 ** s[:, None], 2.0 ** m[:, None]))
    X = np.stack([np.broadcast_to(lN, lE.shape), lE, lN * lE, np.ones_like(lE)], axis=-1)
    G = np.einsum("kip,kiq->kpq", X, X) + 1e-12 * np.eye(4)
    coef = np.linalg.solve(G, np.einsum("kip,i->kp", X, lL)[..., None])[..., 0]
    mse = np.mean((np.einsum("kip,kp->ki", X, coef) - lL) ** 2, axis=1)
    return np.column_stack([coef, s, m]), mse


def fit_clark(N: ArrayLike, E: ArrayLike, L: ArrayLike, *, n_starts: int = 256,
              groups: ArrayLike | None = None, n_boot: int = 200, seed: int = 0) -> ClarkFit:
    """Fit the Clark et al. 2022 law (module docstring) by MSE in log10 space.

    ``N``: dense (activated) parameters; ``E``: experts (1 for dense models); ``n_starts``
    random (s, m) starts join the grid starts. Intervals: ``n_boot`` bootstrap replicates
    (resampling runs by ``groups``, else points), refitted from the point estimate in one batch.
    Raises :class:`FitError` with fewer than 8 points, fewer than 2 distinct N or 3 distinct E,
    constant loss, non-finite input, a singular design, or E_start / E_max running off to
    0 / infinity (no saturation in the data).
    """
    N_, E_, L_ = positive_array("N", N), positive_array("E", E), positive_array("L", L)
    n = same_length(N=N_, E=E_, L=L_)
    if n < 8:
        raise FitError(f"{n} points for 6 parameters (need >= 8)")
    if np.any(E_ < 1):
        raise FitError("E must be >= 1 (dense models are E = 1)")
    if len(np.unique(N_)) < 2 or len(np.unique(E_)) < 3:
        raise FitError("need >= 2 distinct N and >= 3 distinct E")
    lN, lL = np.log10(N_), np.log10(L_)
    if np.ptp(lL) < 1e-12:
        raise FitError("loss is constant: no scaling to fit")
    gs, gm = np.meshgrid(np.arange(-2.0, 6.01, 0.25), np.arange(1.0, 16.01, 0.25), indexing="ij")
    keep = gm > gs + 0.2
    rng = np.random.default_rng(seed)
    rs = rng.uniform(-2.0, 6.0, n_starts)
    s = np.concatenate([gs[keep], rs])
    m = np.concatenate([gm[keep], rs + rng.uniform(0.5, 12.0, n_starts)])
    starts, mse = _ols_starts(lN, E_, lL, s, m)
    n_grid = int(keep.sum())
    pick = np.concatenate([np.argsort(mse[:n_grid])[:32], n_grid + np.arange(n_starts)])
    x0 = starts[pick]
    x, f = batched_lbfgs(_Objective(lN, E_, lL), x0, ftol=1e-15, gtol=1e-12, max_iter=20000)
    if not np.any(np.isfinite(f)):
        raise FitError("no start converged to a finite objective")
    theta = x[np.nanargmin(f)]
    a, b, c, d, s_hat, m_hat = map(float, theta)
    if s_hat < -10 or m_hat > np.log2(E_.max()) + 10:
        raise FitError(f"E_start = 2^{s_hat:.3g}, E_max = 2^{m_hat:.3g}: saturation not "
                       "identified by these data")
    lE = np.log10(saturating_experts(E_, 2.0**s_hat, 2.0**m_hat))
    design = np.column_stack([lN, lE, lN * lE, np.ones(n)])
    if np.linalg.matrix_rank(design) < 4:
        raise FitError("singular design: N and Ê do not separate the four coefficients")
    log_pred = design @ np.array([a, b, c, d])
    gof = goodness_of_fit(lL * _LN10, log_pred * _LN10, float(np.nanmin(f)))
    ci: dict[str, Interval] = {}
    n_ok = 0
    if n_boot > 0:
        W = bootstrap_weights(group_codes(groups, n), n_boot, seed)
        reps, fb = batched_lbfgs(_Objective(lN, E_, lL, W), np.tile(theta, (n_boot, 1)),
                                 ftol=1e-15, gtol=1e-12, max_iter=20000)
        samples = np.column_stack([reps[:, :4], 2.0 ** reps[:, 4:]])
        ci = bootstrap_intervals(samples, _NAMES, ok=np.isfinite(fb))
        n_ok = int((np.all(np.isfinite(samples), axis=1) & np.isfinite(fb)).sum())
    return ClarkFit(a, b, c, d, 2.0**s_hat, 2.0**m_hat, ci, gof, n_ok)
