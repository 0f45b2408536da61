"""Shared machinery of the scaling-law fitters: errors, intervals, robust loss, bootstrap.

Conventions used by every fitter in ``analysis``:

- Residuals are taken in log space, r_i = log(prediction_i) - log(L_i) (natural log), so a
  residual is a relative error. The robust loss is Huber's,
  h_delta(r) = r^2 / 2 for |r| <= delta, delta (|r| - delta / 2) otherwise,
  summed over points (Hoffmann et al. 2022, "Training compute-optimal large language models";
  Besiroglu et al. 2024, "Chinchilla scaling: a replication attempt": delta = 1e-3).
- Intervals are bootstrap percentile intervals (2.5%, 97.5%; Efron & Tibshirani 1993, ch. 13).
  Points of one training run are correlated, so when run ids are given whole runs are resampled,
  never single points; without run ids every point is its own run. Callers pass the unit that is
  independent: a seed (all its runs together) when a sweep has several, else a run. Resampling
  is stratified by arm (Davison & Hinkley 1997, sec. 3.2.3), so each arm keeps its size.
- An interval cannot quietly degenerate (:class:`BootCheck`): a replicate that is not
  identified (too few distinct compute values drawn, non-finite, the target below its floor)
  counts as failed, and when more than ``MAX_FAILED_SHARE`` of the replicates failed, or the
  design allows fewer than ``MIN_DISTINCT`` distinct resamples, the quantity is *not estimable*:
  no interval is given rather than one from the lucky replicates.
- A fit that is not identified (too few points, non-finite values, a parameter at its bound, a
  singular design) raises :class:`FitError` instead of returning numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

DEFAULT_HUBER_DELTA = 1e-3
"""Huber threshold on log residuals (Hoffmann et al. 2022; Besiroglu et al. 2024)."""


class FitError(Exception):
    """A scaling-law fit is not identified by the data, or did not converge."""


@dataclass(frozen=True)
class Interval:
    """A two-sided interval [lo, hi] (bootstrap percentile interval, 95% unless stated)."""

    lo: float
    hi: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, numbers.Real) and self.lo <= float(value) <= self.hi

    @property
    def width(self) -> float:
        return self.hi - self.lo


@dataclass(frozen=True)
class GoodnessOfFit:
    """How well a fitted law describes the points it was fitted to.

    ``rmse_log``: sqrt(mean(r_i^2)) with r_i = log(pred_i) - log(L_i) (natural log, so ~ the RMS
    relative error); ``r2_log``: 1 - sum(r_i^2) / sum((log L_i - mean log L)^2);
    ``objective``: the minimised objective (Huber sum or MSE, as the fitter documents).
    """

    n_points: int
    rmse_log: float
    r2_log: float
    objective: float


def goodness_of_fit(log_obs: FloatArray, log_pred: FloatArray, objective: float) -> GoodnessOfFit:
    """Summarise log-space residuals of a fit (see :class:`GoodnessOfFit`)."""
    r = log_pred - log_obs
    ss_tot = float(np.sum((log_obs - log_obs.mean()) ** 2))
    r2 = 1.0 - float(r @ r) / ss_tot if ss_tot > 0 else float("nan")
    return GoodnessOfFit(len(r), float(np.sqrt(np.mean(r**2))), r2, float(objective))


def huber(r: FloatArray, delta: float) -> tuple[FloatArray, FloatArray]:
    """Elementwise Huber loss h_delta(r) and its derivative psi(r) = clip(r, -delta, delta)."""
    psi = np.clip(r, -delta, delta)
    return psi * (r - 0.5 * psi), psi


def positive_array(name: str, values: ArrayLike) -> FloatArray:
    """``values`` as a 1-D float array, checked finite and > 0 (else :class:`FitError`)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise FitError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise FitError(f"{name} has non-finite values")
    if not np.all(x > 0):
        raise FitError(f"{name} must be > 0 (min {x.min():.4g})")
    return x


def same_length(**arrays: FloatArray) -> int:
    """Common length of the named arrays (else :class:`FitError` naming them)."""
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise FitError(f"inputs differ in length: {sizes}")
    return next(iter(sizes.values()))


def group_codes(groups: ArrayLike | None, n: int) -> NDArray[np.int64]:
    """Integer run codes 0..G-1 per point; without run ids every point is its own run."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups).ravel()
    if len(g) != n:
        raise FitError(f"groups has {len(g)} entries for {n} points")
    return np.unique(g, return_inverse=True)[1].astype(np.int64)


def bootstrap_weights(codes: NDArray[np.int64], n_boot: int, seed: int,
                      strata: NDArray[np.int64] | None = None) -> FloatArray:
    """(n_boot, n) multiplicities of each point in run-resampled bootstrap replicates.

    Each replicate draws whole runs with replacement (within each stratum when ``strata``, one
    code per point such as the arm, is given, so every stratum keeps its number of runs); a
    point's weight is how many times its run was drawn. Fitting with these weights is fitting
    the resampled data set, which lets all replicates run as one batched optimisation.
    """
    rng = np.random.default_rng(seed)
    strata = np.zeros_like(codes) if strata is None else np.asarray(strata)
    counts = np.zeros((n_boot, int(codes.max()) + 1))
    for s in np.unique(strata):
        runs = np.unique(codes[strata == s])
        draws = rng.integers(0, len(runs), size=(n_boot, len(runs)))
        for b in range(n_boot):
            counts[b] += np.bincount(runs[draws[b]], minlength=counts.shape[1])
    return counts[:, codes]


MAX_FAILED_SHARE = 0.10
"""Above this share of failed bootstrap replicates a quantity is not estimable."""
MIN_DISTINCT = 50
"""Fewest distinct resamples a design must allow for a 95% percentile interval."""


def distinct_resamples(codes: NDArray[np.int64], strata: NDArray[np.int64] | None = None,
                       cap: int = 10**9) -> int:
    """How many distinct resamples a stratified run bootstrap can draw: the product over strata
    of C(2n - 1, n), the multisets of n runs drawn from n (Efron & Tibshirani 1993, ch. 6);
    capped at ``cap``."""
    strata = np.zeros_like(codes) if strata is None else np.asarray(strata)
    total = 1
    for s in np.unique(strata):
        n = len(np.unique(codes[strata == s]))
        total = min(cap, total * math.comb(2 * n - 1, n))
    return total


@dataclass(frozen=True)
class BootCheck:
    """How a bootstrap went: ``n_boot`` replicates drawn, ``n_failed`` not identified, from a
    design with ``distinct`` possible resamples of ``unit`` (what was resampled)."""

    n_boot: int
    n_failed: int
    distinct: int
    unit: str = "runs within each arm"

    @property
    def failed_share(self) -> float:
        return self.n_failed / self.n_boot if self.n_boot else float("nan")

    @property
    def reason(self) -> str:
        """Empty when estimable, else every reason why not (the report's wording)."""
        if self.n_boot <= 0:
            return "no bootstrap"
        why = []
        if self.distinct < MIN_DISTINCT:
            why.append(f"resampling {self.unit} allows only {self.distinct} distinct resamples "
                       f"(< {MIN_DISTINCT})")
        if self.failed_share > MAX_FAILED_SHARE:
            why.append(f"{self.failed_share:.0%} of {self.n_boot} bootstrap refits failed "
                       f"(> {MAX_FAILED_SHARE:.0%})")
        return "not estimable: " + " and ".join(why) if why else ""

    @property
    def estimable(self) -> bool:
        return not self.reason


def checked_intervals(samples: FloatArray, names: Sequence[str], ok: NDArray[np.bool_],
                      check: BootCheck) -> dict[str, Interval]:
    """Percentile intervals of the ``ok`` replicates, or {} when ``check`` is not estimable."""
    if not check.estimable or samples.shape[0] == 0:
        return {}
    return percentile_intervals(samples[ok], names)


def bootstrap_intervals(samples: FloatArray, names: Sequence[str],
                        ok: NDArray[np.bool_] | None = None) -> dict[str, Interval]:
    """95% percentile intervals from replicate estimates ``samples`` (n_boot, len(names)).

    Replicates that failed (``ok`` False, or any non-finite value) are dropped; if more than
    half failed the intervals would describe a biased subset, so this raises :class:`FitError`.
    """
    if samples.shape[0] == 0:
        return {}
    good = np.all(np.isfinite(samples), axis=1) & (True if ok is None else ok)
    if good.sum() < max(2, samples.shape[0] / 2):
        raise FitError(f"bootstrap: only {int(good.sum())} of {samples.shape[0]} refits succeeded")
    return percentile_intervals(samples[good], names)


def percentile_intervals(samples: FloatArray, names: Sequence[str]) -> dict[str, Interval]:
    """2.5% and 97.5% percentiles of each column of ``samples``, ignoring NaN."""
    lo, hi = np.nanpercentile(samples, [2.5, 97.5], axis=0)
    return {n: Interval(float(a), float(b)) for n, a, b in zip(names, lo, hi, strict=True)}


Objective = Callable[[FloatArray, NDArray[np.int64]], tuple[FloatArray, FloatArray]]
"""``fg(X, rows)``: values (B,) and gradients (B, P) at points X (B, P) of batch rows ``rows``."""


def batched_lbfgs(fg: Objective, x0: FloatArray, *,
                  memory: int = 10, max_iter: int = 1000, ftol: float = 2.220446049250313e-09,
                  gtol: float = 1e-5) -> tuple[FloatArray, FloatArray]:
    """Minimise many independent starts at once with L-BFGS (Nocedal 1980), vectorised.

    ``fg(X, rows)`` evaluates rows ``rows`` of the batch (each row may have its own data, e.g.
    bootstrap weights) at points X and returns values (B,) and gradients (B, P). Each row runs
    its own L-BFGS with an Armijo backtracking line search and scipy's L-BFGS-B stopping rules
    (stop when (f_k - f_k+1) <= ftol * max(|f_k|, |f_k+1|, 1) or max |g| <= gtol), so the 4,500
    starts of the Chinchilla init grid cost a few hundred vectorised evaluations instead of
    4,500 Python-level optimiser loops. Returns the final points and values.
    """
    X = np.array(x0, dtype=np.float64)
    B, P = X.shape
    f, g = fg(X, np.arange(B))
    S = np.zeros((B, memory, P))
    Y = np.zeros((B, memory, P))
    rho = np.zeros((B, memory))
    fresh = np.ones(B, dtype=bool)
    active = np.isfinite(f) & (np.abs(g).max(axis=1) > gtol)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        d = _two_loop(g[idx], S[idx], Y[idx], rho[idx])
        slope = np.einsum("bp,bp->b", d, g[idx])
        bad = ~(slope < 0)
        d[bad], slope[bad] = -g[idx][bad], -np.einsum("bp,bp->b", g[idx][bad], g[idx][bad])
        first = fresh[idx] | bad
        step = np.where(first, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1e-300), 1.0)
        x_new, f_new, g_new = X[idx].copy(), f[idx].copy(), g[idx].copy()
        todo = np.arange(idx.size)
        for _ in range(50):
            xt = X[idx[todo]] + step[todo, None] * d[todo]
            ft, gt = fg(xt, idx[todo])
            ok = np.isfinite(ft) & (ft <= f[idx[todo]] + 1e-4 * step[todo] * slope[todo])
            acc = todo[ok]
            x_new[acc], f_new[acc], g_new[acc] = xt[ok], ft[ok], gt[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
            step[todo] *= 0.5
        moved = np.setdiff1d(np.arange(idx.size), todo)
        s, y = x_new - X[idx], g_new - g[idx]
        sy = np.einsum("bp,bp->b", s, y)
        keep = moved[sy[moved] > 1e-12 * np.einsum("bp,bp->b", y[moved], y[moved])]
        rows = idx[keep]
        S[rows], Y[rows], rho[rows] = (np.roll(S[rows], -1, axis=1), np.roll(Y[rows], -1, axis=1),
                                      np.roll(rho[rows], -1, axis=1))
        S[rows, -1], Y[rows, -1], rho[rows, -1] = s[keep], y[keep], 1.0 / sy[keep]
        fresh[idx] = False
        decrease = f[idx] - f_new
        scale = np.maximum(np.maximum(np.abs(f[idx]), np.abs(f_new)), 1.0)
        X[idx], f[idx], g[idx] = x_new, f_new, g_new
        done = (decrease <= ftol * scale) | (np.abs(g_new).max(axis=1) <= gtol)
        done[todo] = True
        active[idx[done]] = False
    return X, f


def _two_loop(g: FloatArray, S: FloatArray, Y: FloatArray, rho: FloatArray) -> FloatArray:
    """L-BFGS two-loop recursion, vectorised over rows; empty memory slots have rho = 0."""
    q = g.copy()
    m = S.shape[1]
    alpha = np.zeros((g.shape[0], m))
    for i in range(m - 1, -1, -1):
        alpha[:, i] = rho[:, i] * np.einsum("bp,bp->b", S[:, i], q)
        q -= alpha[:, i, None] * Y[:, i]
    yy = np.einsum("bp,bp->b", Y[:, -1], Y[:, -1])
    gamma = np.where(rho[:, -1] > 0, 1.0 / np.maximum(rho[:, -1] * yy, 1e-300), 1.0)
    r = gamma[:, None] * q
    for i in range(m):
        beta = rho[:, i] * np.einsum("bp,bp->b", Y[:, i], r)
        r += (alpha[:, i] - beta)[:, None] * S[:, i]
    return -r
