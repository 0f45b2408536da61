"""The K2 sparsity law and compute multipliers recover planted FLOP ratios (CPU, seconds).

Synthetic arms follow L = E + A (m_s C / 1e17)^-alpha with the K2 ratios of sparsity 48 over 8,
16 and 32 (1.69x, 1.39x, 1.15x; Kimi K2 report section 2.3): m = 1, 1.69/1.39, 1.69/1.15, 1.69
for sparsity 8, 16, 32, 48. Each arm has 8 runs of 6 loss-curve points with a run-level offset,
so intervals must come from resampling runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.laws import FitError, compute_multiplier, fit_sparsity_law

MULT = {8: 1.0, 16: 1.69 / 1.39, 32: 1.69 / 1.15, 48: 1.69}
E, A, ALPHA = 1.9, 1.5, 0.3
SEEDS = 50
MIN_COVERED = 42


def arms_frame(seed: int, mult: dict[int, float] = MULT, runs: int = 8,
               alpha: dict[int, float] | None = None, noise: float = 0.003) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for arm, m in mult.items():
        a = ALPHA if alpha is None else alpha[arm]
        for r in range(runs):
            C = np.geomspace(1e17, 1e18, 6) * 1.8**r
            offset = rng.normal(0, noise * 2 / 3)
            L = (E + A * (m * C / 1e17) ** -a) * np.exp(offset + rng.normal(0, noise, C.size))
            rows += [{"run": f"s{arm}-{r}", "arm": arm, "flops": c, "loss": v}
                     for c, v in zip(C, L, strict=True)]
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_sparsity_law_recovers_multipliers_and_covers() -> None:
    hits = dict.fromkeys(MULT, 0)
    estimates: dict[int, list[float]] = {arm: [] for arm in MULT}
    for seed in range(SEEDS):
        fit = fit_sparsity_law(arms_frame(seed), n_boot=100, seed=seed)
        assert fit.reference == 8 and fit.multipliers[8] == 1.0
        for arm, m in MULT.items():
            hits[arm] += int(m in fit.multiplier_ci[arm])
            estimates[arm].append(fit.multipliers[arm])
    for arm, m in MULT.items():
        assert float(np.median(estimates[arm])) == pytest.approx(m, rel=0.03), arm
    assert min(hits.values()) >= MIN_COVERED, hits


def test_sparsity_table_reads_like_k2() -> None:
    fit = fit_sparsity_law(arms_frame(0), L_star=2.4, n_boot=200)
    assert pytest.approx(E, abs=0.05) == fit.E and fit.alpha == pytest.approx(ALPHA, rel=0.1)
    assert [(r.arm, r.baseline) for r in fit.table] == [
        (16, 8), (32, 8), (48, 8), (32, 16), (48, 16), (48, 32)]
    row = {(r.arm, r.baseline): r for r in fit.table}
    for baseline, k2 in ((8, 1.69), (16, 1.39), (32, 1.15)):
        r = row[(48, baseline)]
        assert r.ratio == pytest.approx(k2, rel=0.05)
        assert r.ci is not None and r.ci.lo < r.ratio < r.ci.hi
        assert r.C_baseline / r.C_arm == pytest.approx(r.ratio)
        assert r.L_star == 2.4 and not r.extrapolated
    assert fit_sparsity_law(arms_frame(0), L_star=2.0, n_boot=0).table[0].extrapolated
    flipped = fit_sparsity_law(arms_frame(0), reference=48, n_boot=0)
    assert flipped.multipliers[48] == 1.0
    assert flipped.multipliers[8] == pytest.approx(1 / fit.multipliers[48], rel=1e-6)
    assert flipped.ratio(48, 8).ratio == pytest.approx(row[(48, 8)].ratio, rel=1e-6)


def test_sparsity_law_errors() -> None:
    df = arms_frame(0)
    with pytest.raises(FitError, match="floor"):
        fit_sparsity_law(df, L_star=1.0, n_boot=0)
    with pytest.raises(FitError, match="arms"):
        fit_sparsity_law(df[df["arm"] == 8], n_boot=0)
    with pytest.raises(FitError, match="columns"):
        fit_sparsity_law(df.drop(columns="run"), n_boot=0)
    with pytest.raises(FitError, match="reference"):
        fit_sparsity_law(df, reference=64, n_boot=0)
    flat = df.assign(loss=2.5)
    with pytest.raises(FitError, match="constant"):
        fit_sparsity_law(flat, n_boot=0)


@pytest.mark.slow
def test_compute_multiplier_recovers_ratio_and_covers() -> None:
    stars = [2.2, 2.4, 2.6]
    hits = np.zeros(len(stars), dtype=int)
    ratios = []
    for seed in range(SEEDS):
        df = arms_frame(seed, {8: 1.0, 48: 1.69})
        curve = compute_multiplier(df[df["arm"] == 48], df[df["arm"] == 8], stars, n_boot=100,
                                   seed=seed)
        assert not curve.shared_exponent and all(r == "" for r in curve.reason)
        lo, hi = np.array(curve.lo), np.array(curve.hi)
        hits += (lo <= 1.69) & (hi >= 1.69)
        ratios.append(curve.ratio)
    np.testing.assert_allclose(np.median(ratios, axis=0), 1.69, rtol=0.03)
    assert hits.min() >= MIN_COVERED, hits


def test_compute_multiplier_follows_l_star_and_flags_bad_targets() -> None:
    df = arms_frame(1, {0: 1.0, 1: 1.0}, alpha={0: 0.3, 1: 0.25}, noise=0.0005)
    stars = np.array([1.5, 1.95, 2.3, 2.6, 3.0])
    curve = compute_multiplier(df[df["arm"] == 0], df[df["arm"] == 1], stars, n_boot=50)
    excess = np.maximum(stars - E, 1e-9) / A
    truth = excess ** (-1 / 0.25) / excess ** (-1 / 0.3)
    assert np.isnan(curve.ratio[0]) and "floor" in curve.reason[0]
    assert np.isnan(curve.ratio[1]) and "outside" in curve.reason[1]
    np.testing.assert_allclose(curve.ratio[2:], truth[2:], rtol=0.03)
    assert all(lo <= r <= hi for lo, r, hi in zip(curve.lo[2:], curve.ratio[2:], curve.hi[2:],
                                                  strict=True))
    assert curve.ratio[2] > 1.5 * curve.ratio[4]


def test_compute_multiplier_shares_the_exponent_when_data_are_thin() -> None:
    df = arms_frame(2, {8: 1.0, 48: 1.69}, runs=1, noise=0.0005)
    thin_a = df[df["arm"] == 48].iloc[::2]
    full_b = df[df["arm"] == 8]
    with pytest.raises(FitError):
        compute_multiplier(thin_a, full_b, 2.6, shared_exponent=False, n_boot=0)
    curve = compute_multiplier(thin_a, full_b, [2.6, 2.8], n_boot=0)
    assert curve.shared_exponent
    np.testing.assert_allclose(curve.ratio, 1.69, rtol=0.03)
    with pytest.raises(FitError, match="columns"):
        compute_multiplier(thin_a.drop(columns="loss"), full_b, 2.6)


def test_multiplier_falls_back_to_pure_power_laws_when_no_floor_is_identified() -> None:
    """Three budgets per arm on floorless laws L = A (m C)^-alpha: every floored frontier puts E
    at 0, so the multiplier comes from shared-exponent power laws and recovers m."""
    C = np.repeat([1e12, 3e12, 1e13], 2)

    def arm(m: float, tag: str) -> pd.DataFrame:
        loss = 40.0 * (m * C) ** -0.1
        return pd.DataFrame({"run": [f"{tag}{i}" for i in range(len(C))], "flops": C,
                             "loss": loss})

    a, b = arm(1.5, "a"), arm(1.0, "b")
    star = float(np.median(b["loss"]))
    curve = compute_multiplier(a, b, star, n_boot=50)
    assert curve.frontier == "no_floor" and curve.shared_exponent
    assert curve.reason == ("",)
    assert abs(curve.ratio[0] - 1.5) < 0.01
    assert curve.lo[0] - 0.01 <= 1.5 <= curve.hi[0] + 0.01
    with pytest.raises(FitError, match="3 distinct compute values"):
        compute_multiplier(a[a["flops"] < 1e13], b[b["flops"] < 1e13], star, n_boot=0)
