"""Chinchilla Approach 3 (a parametric loss surface) and Approach 2 (IsoFLOP parabolas).

Approach 3 (Hoffmann et al. 2022, "Training compute-optimal large language models", eq. 2 and
appendix D.2; the replication of Besiroglu et al. 2024, "Chinchilla scaling: a replication
attempt"):

    L(N, D) = E + A / N^alpha + B / D^beta,
    log L_i ~ LSE(a - alpha log N_i, b - beta log D_i, e),   A = e^a, B = e^b, E = e^e,

minimising sum_i h_delta(LSE_i - log L_i) (Huber, delta = 1e-3). ``method="grid"`` runs L-BFGS
(unbounded, as in the replication; scipy's L-BFGS-B stopping rules) from every point of the init
grid alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4,500
starts in one vectorised batch: ~4 s on 2 cores, against ~30 s for 4,500 scipy calls), refines
the four best with tight tolerances and keeps the lowest objective.
``method="vpnls"`` uses variable projection (Czech et al. 2026, "Problems with Chinchilla
Approach 2", Open-Athena/vpnls): for fixed (alpha, beta) the surface is linear in (E, A, B), so
NNLS on relative residuals on a 2-D (alpha, beta) grid picks the starts, then L-BFGS refines the
same Huber objective. The problem is ill-conditioned (kappa ~ 3.5e11), which is why both paths
search globally before refining.

Approach 2 (Hoffmann et al. 2022 section 3.2; the Llama 3 paper, Dubey et al. 2024, section
3.2.1): per compute budget a parabola L = p0 + p1 log X + p2 (log X)^2, its minimum X*, then
X*(C) = A C^alpha by least squares in log space.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analysis.fitcore import (
    DEFAULT_HUBER_DELTA,
    FitError,
    FloatArray,
    GoodnessOfFit,
    Interval,
    batched_lbfgs,
    bootstrap_intervals,
    bootstrap_weights,
    goodness_of_fit,
    group_codes,
    huber,
    positive_array,
    same_length,
)

_INIT_GRID = np.array(list(itertools.product(
    np.arange(0.0, 30.0, 5.0), np.arange(0.0, 30.0, 5.0), np.arange(-1.0, 1.5, 0.5),
    np.arange(0.0, 2.5, 0.5), np.arange(0.0, 2.5, 0.5))))
"""Epoch's init grid over (a, b, e, alpha, beta): 6 * 6 * 5 * 5 * 5 = 4,500 starts."""

_VP_EXPONENTS = np.arange(0.02, 2.0001, 0.02)
"""Variable-projection grid for alpha and beta (100 x 100 cells)."""
_EXPONENT_RANGE = (1e-3, 5.0)
"""An exponent outside this range is not identified by the data (FitError)."""


@dataclass(frozen=True)
class ChinchillaFit:
    """L(N, D) = E + A / N^alpha + B / D^beta; ``ci`` holds 95% bootstrap intervals for
    "E", "A", "B", "alpha", "beta" (empty when n_boot = 0); ``gof.objective`` is the Huber sum."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    method: str
    ci: Mapping[str, Interval]
    gof: GoodnessOfFit
    n_boot_ok: int

    def predict(self, N: ArrayLike, D: ArrayLike) -> FloatArray:
        N_, D_ = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
        return self.E + self.A * N_**-self.alpha + self.B * D_**-self.beta

    def optimal_allocation(self, C: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Compute-optimal (N, D) for C = 6 N D FLOPs (Hoffmann et al. 2022 eq. 4):
        N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta)) / G,
        G = (alpha A / (beta B))^(1/(alpha+beta))."""
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        c = np.asarray(C, dtype=np.float64) / 6.0
        return G * c ** (self.beta / s), c ** (self.alpha / s) / G


class _Surface:
    """Batched objective: sum_i W_i h_delta(LSE(a - alpha lN_i, b - beta lD_i, e) - lL_i),
    rows of theta = (a, b, e, alpha, beta), with its analytic gradient; W: one row of point
    weights per batch row (None: all ones)."""

    def __init__(self, lN: FloatArray, lD: FloatArray, lL: FloatArray, delta: float,
                 W: FloatArray | None = None) -> None:
        self.lN, self.lD, self.lL, self.delta, self.W = lN, lD, lL, delta, W

    def __call__(self, theta: FloatArray, rows: NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
        a, b, e, al, be = (theta[:, j:j + 1] for j in range(5))
        t0, t1 = a - al * self.lN, b - be * self.lD
        m = np.maximum(np.maximum(t0, t1), e)
        w0, w1, w2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
        s = w0 + w1 + w2
        h, psi = huber(m + np.log(s) - self.lL, self.delta)
        W = np.ones((1, len(self.lL))) if self.W is None else self.W[rows]
        q = W * psi / s
        q0, q1 = q * w0, q * w1
        grad = np.stack([q0.sum(1), q1.sum(1), (q * w2).sum(1), -(q0 @ self.lN),
                         -(q1 @ self.lD)], axis=1)
        f = np.sum(W * h, axis=1)
        bad = ~(np.isfinite(f) & np.all(np.isfinite(grad), axis=1))
        f[bad], grad[bad] = np.inf, 0.0
        return f, grad


def _vp_starts(lN: FloatArray, lD: FloatArray, L: FloatArray, top: int) -> FloatArray:
    """Variable projection on the (alpha, beta) grid: exact NNLS for (E, A, B) >= 0 on relative
    residuals, min sum_i ((E + A N_i^-alpha + B D_i^-beta) / L_i - 1)^2, by enumerating the 7
    active sets; returns the ``top`` cells by the Huber objective as theta rows."""
    n0, d0 = lN.mean(), lD.mean()
    w = 1.0 / L
    x = np.exp(-np.outer(_VP_EXPONENTS, lN - n0))
    y = np.exp(-np.outer(_VP_EXPONENTS, lD - d0))
    K = len(_VP_EXPONENTS)
    w2 = w * w
    G = np.empty((K, K, 3, 3))
    G[..., 0, 0] = w2.sum()
    G[..., 0, 1] = G[..., 1, 0] = (x @ w2)[:, None]
    G[..., 0, 2] = G[..., 2, 0] = (y @ w2)[None, :]
    G[..., 1, 1] = ((x * x) @ w2)[:, None]
    G[..., 2, 2] = ((y * y) @ w2)[None, :]
    G[..., 1, 2] = G[..., 2, 1] = (x * w2) @ y.T
    h = np.stack(np.broadcast_arrays(w.sum(), (x @ w)[:, None], (y @ w)[None, :]), axis=-1)
    best_rss = np.full((K, K), np.inf)
    coef = np.zeros((K, K, 3))
    for size in (1, 2, 3):
        for S in itertools.combinations(range(3), size):
            Gs = G[..., list(S)][..., list(S), :]
            ridge = 1e-12 * np.einsum("...ii->...", Gs)[..., None, None] * np.eye(size)
            th = np.linalg.solve(Gs + ridge, h[..., list(S)][..., None])[..., 0]
            rss = len(L) - 2 * np.sum(th * h[..., list(S)], -1) + np.einsum(
                "...i,...ij,...j->...", th, Gs, th)
            better = np.all(th >= 0, axis=-1) & (rss < best_rss)
            best_rss = np.where(better, rss, best_rss)
            full = np.zeros((K, K, 3))
            full[..., list(S)] = th
            coef = np.where(better[..., None], full, coef)
    alpha, beta = np.meshgrid(_VP_EXPONENTS, _VP_EXPONENTS, indexing="ij")
    tiny = 1e-6 * L.min()
    theta = np.stack([np.log(np.maximum(coef[..., 1], tiny)) + alpha * n0,
                      np.log(np.maximum(coef[..., 2], tiny)) + beta * d0,
                      np.log(np.maximum(coef[..., 0], tiny)), alpha, beta], axis=-1).reshape(-1, 5)
    f, _ = _Surface(lN, lD, np.log(L), DEFAULT_HUBER_DELTA)(theta, np.arange(len(theta)))
    return theta[np.argsort(f)[:top]]


def fit_chinchilla(N: ArrayLike, D: ArrayLike, L: ArrayLike,
                   method: Literal["grid", "vpnls"] = "grid", *, groups: ArrayLike | None = None,
                   n_boot: int = 200, seed: int = 0,
                   delta: float = DEFAULT_HUBER_DELTA) -> ChinchillaFit:
    """Chinchilla Approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta (module docstring).

    ``method``: "grid" (Epoch's 4,500-start recipe) or "vpnls" (variable projection starts);
    both minimise the same Huber objective. Intervals: ``n_boot`` bootstrap replicates
    (resampling runs by ``groups``, else points), each refitted by L-BFGS from the point
    estimate, all in one batch. Raises :class:`FitError` with fewer than 8 points or 3 distinct
    N or D, constant loss, non-finite input, or an exponent or E at a bound.
    """
    N_, D_, L_ = positive_array("N", N), positive_array("D", D), positive_array("L", L)
    n = same_length(N=N_, D=D_, L=L_)
    if n < 8:
        raise FitError(f"{n} points for 5 parameters (need >= 8)")
    if min(len(np.unique(N_)), len(np.unique(D_))) < 3:
        raise FitError("fewer than 3 distinct N or D: the surface is not identified")
    lN, lD, lL = np.log(N_), np.log(D_), np.log(L_)
    if np.ptp(lL) < 1e-12:
        raise FitError("loss is constant: no scaling to fit")
    if method == "grid":
        starts = _INIT_GRID
        x, f = batched_lbfgs(_Surface(lN, lD, lL, delta), starts)
        starts = x[np.argsort(f)[:4]]
    elif method == "vpnls":
        starts = _vp_starts(lN, lD, L_, top=8)
    else:
        raise ValueError(f"method must be 'grid' or 'vpnls', not {method!r}")
    x, f = batched_lbfgs(_Surface(lN, lD, lL, delta), starts, ftol=1e-15, gtol=1e-12,
                         max_iter=10000)
    theta = x[np.nanargmin(f)]
    if not np.all(np.isfinite(theta)):
        raise FitError("fit did not converge to finite parameters")
    a, b, e, alpha, beta = theta
    lo, hi = _EXPONENT_RANGE
    if not (lo < alpha < hi and lo < beta < hi):
        raise FitError(f"alpha = {alpha:.4g}, beta = {beta:.4g} outside {_EXPONENT_RANGE}")
    if np.exp(e) <= 1e-4 * L_.min():
        raise FitError("floor E at its bound 0: not identified")
    log_pred = np.logaddexp(np.logaddexp(a - alpha * lN, b - beta * lD), e)
    gof = goodness_of_fit(lL, log_pred, float(np.nanmin(f)))
    names = ["E", "A", "B", "alpha", "beta"]
    ci: dict[str, Interval] = {}
    n_ok = 0
    if n_boot > 0:
        W = bootstrap_weights(group_codes(groups, n), n_boot, seed)
        reps, _ = batched_lbfgs(_Surface(lN, lD, lL, delta, W), np.tile(theta, (n_boot, 1)),
                                ftol=1e-13, gtol=1e-10, max_iter=5000)
        samples = np.column_stack([np.exp(reps[:, 2]), np.exp(reps[:, 0]), np.exp(reps[:, 1]),
                                   reps[:, 3], reps[:, 4]])
        ci = bootstrap_intervals(samples, names)
        n_ok = int(np.all(np.isfinite(samples), axis=1).sum())
    return ChinchillaFit(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha),
                         float(beta), method, ci, gof, n_ok)


@dataclass(frozen=True)
class IsoFlopBudget:
    """One compute budget of Approach 2: the parabola L = p0 + p1 u + p2 u^2 in u = log X has
    its minimum at X_opt = exp(-p1 / (2 p2)); ``interior``: X_opt lies within the sampled X."""

    C: float
    X_opt: float
    L_opt: float
    curvature: float
    n_points: int
    interior: bool


@dataclass(frozen=True)
class IsoFlopFit:
    """X*(C) = A C^alpha from the per-budget minima; ``ci`` holds 95% bootstrap intervals for
    "A" and "alpha"; ``gof`` describes the power law in log space (objective: its SSE)."""

    A: float
    alpha: float
    ci: Mapping[str, Interval]
    gof: GoodnessOfFit
    budgets: tuple[IsoFlopBudget, ...]
    n_boot_ok: int

    def predict(self, C: ArrayLike) -> FloatArray:
        return self.A * np.asarray(C, dtype=np.float64) ** self.alpha


def snap_budgets(C: ArrayLike, rtol: float = 0.01) -> tuple[NDArray[np.int64], FloatArray]:
    """Budget code per point and budget values: sorted C values within a relative ``rtol`` of
    the first value of their run are one budget, valued at the median of its points."""
    C_ = positive_array("C", C)
    order = np.argsort(C_)
    codes = np.empty(len(C_), dtype=np.int64)
    start, code = C_[order[0]], 0
    for i in order:
        if C_[i] > start * (1 + rtol):
            start, code = C_[i], code + 1
        codes[i] = code
    values = np.array([np.median(C_[codes == j]) for j in range(code + 1)])
    return codes, values


def _parabola_minima(u: FloatArray, L: FloatArray, codes: NDArray[np.int64], n_budgets: int,
                     W: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Weighted least-squares parabola per budget and weight row: (u*, L(u*), p2), (B, n_b)."""
    B = len(W)
    u_opt, L_opt, curv = (np.full((B, n_budgets), np.nan) for _ in range(3))
    for j in range(n_budgets):
        m = codes == j
        V = np.stack([np.ones(m.sum()), u[m], u[m] ** 2], axis=1)
        G = np.einsum("bi,ip,iq->bpq", W[:, m], V, V)
        rhs = np.einsum("bi,ip,i->bp", W[:, m], V, L[m])
        distinct = np.array([len(np.unique(u[m][w > 0])) for w in W[:, m]])
        ok = distinct >= 3
        p = np.full((B, 3), np.nan)
        if ok.any():
            p[ok] = np.linalg.solve(G[ok], rhs[ok][..., None])[..., 0]
        good = ok & (p[:, 2] > 0)
        u_opt[good, j] = -p[good, 1] / (2 * p[good, 2])
        L_opt[good, j] = p[good, 0] - p[good, 1] ** 2 / (4 * p[good, 2])
        curv[:, j] = p[:, 2]
    return u_opt, L_opt, curv


def fit_isoflop(C: ArrayLike, X: ArrayLike, L: ArrayLike, *, rtol: float = 0.01,
                n_boot: int = 200, seed: int = 0) -> IsoFlopFit:
    """Chinchilla Approach 2: per-budget parabola minima X*, then log X* = log A + alpha log C.

    ``X`` is tokens D or parameters N; budgets are the distinct C (``snap_budgets`` with
    ``rtol``). Intervals: ``n_boot`` replicates resampling points within each budget (each
    point is its own run). Raises :class:`FitError` with fewer than 2 budgets, a budget with
    fewer than 3 distinct X, a parabola that is not convex, or non-finite input.
    """
    C_, X_, L_ = positive_array("C", C), positive_array("X", X), positive_array("L", L)
    same_length(C=C_, X=X_, L=L_)
    codes, values = snap_budgets(C_, rtol)
    nb = len(values)
    if nb < 2:
        raise FitError(f"{nb} compute budget(s): need >= 2 for a power law")
    u = np.log(X_)
    u_opt, L_opt, curv = _parabola_minima(u, L_, codes, nb, np.ones((1, len(L_))))
    for j in range(nb):
        if not np.isfinite(u_opt[0, j]):
            raise FitError(f"budget C = {values[j]:.3g}: fewer than 3 distinct X or a parabola "
                           f"that is not convex (p2 = {curv[0, j]:.3g})")
    lC = np.log(values)
    slope, icpt = np.polyfit(lC, u_opt[0], 1)
    log_pred = icpt + slope * lC
    gof = goodness_of_fit(u_opt[0], log_pred, float(np.sum((log_pred - u_opt[0]) ** 2)))
    budgets = tuple(
        IsoFlopBudget(float(values[j]), float(np.exp(u_opt[0, j])), float(L_opt[0, j]),
                      float(curv[0, j]), int(np.sum(codes == j)),
                      bool(u[codes == j].min() <= u_opt[0, j] <= u[codes == j].max()))
        for j in range(nb))
    ci: dict[str, Interval] = {}
    n_ok = 0
    if n_boot > 0:
        W = bootstrap_weights(np.arange(len(L_)), n_boot, seed, strata=codes)
        ub = _parabola_minima(u, L_, codes, nb, W)[0]
        xc = lC - lC.mean()
        slopes = (ub - ub.mean(1, keepdims=True)) @ xc / (xc @ xc)
        icpts = ub.mean(1) - slopes * lC.mean()
        samples = np.column_stack([np.exp(icpts), slopes])
        ci = bootstrap_intervals(samples, ["A", "alpha"])
        n_ok = int(np.all(np.isfinite(samples), axis=1).sum())
    return IsoFlopFit(float(np.exp(icpt)), float(slope), ci, gof, budgets, n_ok)
