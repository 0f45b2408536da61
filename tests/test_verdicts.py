"""Planted truths through the whole study: the verdict must follow what was planted.

Runs follow L = E + A (m C / C0)^-alpha (the K2 sparsity-law form, arXiv 2507.20534 sec. 2.3)
with an arm multiplier m over the baseline, 4 budgets x 4 seeds per arm, and a seed-level
noise on each final loss; the arm's throughput is planted too, so its wall-clock multiplier is
known. A bootstrap that cannot be trusted must say "not estimable".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.collect import Collected
from analysis.comparisons import paired_change
from analysis.fitcore import MAX_FAILED_SHARE, BootCheck
from analysis.inference import POWER_FACTOR, mde_factor, noise_of, seed_mean_noise, seeds_needed
from analysis.laws import compute_multiplier, fit_power_law
from analysis.points import annotate, select_best
from analysis.results import Pair
from analysis.studies import study
from analysis.wording import Verdict
from harness.config.sweep import AnalysisSpec

E, A, ALPHA, C0 = 2.0, 1.2, 0.3, 1e12
TOKENS = (1e6, 2e6, 4e6, 8e6)
FPT = 1e6  # FLOPs per token


def planted(ratio: float, noise: float, seeds: int = 4, speed: float = 1.0,
            lrs: dict[str, tuple[float, ...]] | None = None, seed: int = 0) -> Collected:
    """Arms ``base`` and ``new`` (``new`` needs 1/ratio of the FLOPs); lognormal seed noise of
    sd ``noise`` per run; ``new`` runs at ``speed`` x the baseline's tokens/s."""
    rng = np.random.default_rng(seed)
    runs, curves = [], []
    for arm, m in (("base", 1.0), ("new", ratio)):
        for lr in (lrs or {}).get(arm, (0.01,)):
            for tokens in TOKENS:
                for s in range(seeds):
                    flops = tokens * FPT
                    penalty = 1 + 3 * np.log10(lr / 0.01) ** 2
                    loss = (E + A * penalty * (m * flops / C0) ** -ALPHA) * np.exp(
                        rng.normal(0, noise))
                    run = f"{arm}-{tokens:g}-{lr:g}-s{s}"
                    runs.append({"run_id": run, "name": run, "status": "finished", "arm": arm,
                                 "flops": flops, "tokens": tokens, "final_val_loss": loss,
                                 "train.tokens": int(tokens), "train.seed": s, "optim.lr": lr,
                                 "optim.name": arm, "flops_per_token": FPT})
                    steps = np.arange(1, 5)
                    curves.append(pd.DataFrame({
                        "run_id": run, "step": steps, "flops": flops * steps / 4,
                        "val/loss": loss * (1 + 0.1 * (4 - steps)),
                        "perf/tokens_per_s": 1e4 * (speed if arm == "new" else 1.0)}))
    return Collected(pd.DataFrame(runs), pd.concat(curves, ignore_index=True))


AXES = ["optim.name", "train.tokens", "optim.lr", "train.seed"]


def verdict_of(data: Collected, claim: dict[str, object], **spec: object) -> tuple[Verdict, str]:
    full = AnalysisSpec.model_validate({"kind": "multiplier", "baseline": "base", **spec,
                                        "claim": {"text": "planted", "arms": ["new"], **claim}})
    result = study("planted", data, full, AXES, n_boot=100)
    (head,) = result.headlines
    return head.verdict, f"{head.ours} | {head.reason}"


NO_PENALTY = {"kind": "no_penalty", "margin": 0.1}
EFFECT = {"kind": "effect", "direction": "better"}


def test_a_small_true_difference_under_wide_noise_is_inconclusive() -> None:
    data = planted(1.05, noise=0.03)
    for claim in (NO_PENALTY, EFFECT):
        verdict, why = verdict_of(data, claim)
        assert verdict is Verdict.INCONCLUSIVE, why


def test_no_difference_under_tight_noise_agrees_with_no_penalty() -> None:
    verdict, why = verdict_of(planted(1.0, noise=0.001), NO_PENALTY)
    assert verdict is Verdict.AGREES, why
    verdict, why = verdict_of(planted(1.0, noise=0.001), EFFECT)
    assert verdict is not Verdict.AGREES, why  # no effect is never evidence of one


def test_a_large_true_difference_agrees_with_the_effect() -> None:
    verdict, why = verdict_of(planted(1.3, noise=0.005), EFFECT)
    assert verdict is Verdict.AGREES, why
    verdict, why = verdict_of(planted(1.3, noise=0.005), NO_PENALTY)
    assert verdict is Verdict.DISAGREES, why


def test_wall_clock_shows_a_choice_that_wins_on_flops_but_loses_on_speed() -> None:
    spec = AnalysisSpec.model_validate({"kind": "multiplier", "baseline": "base"})
    result = study("speed", planted(1.3, noise=0.005, speed=0.5), spec, AXES, n_boot=100)
    (m,) = result.multipliers
    assert m.throughput_ratio == pytest.approx(0.5)
    read = m.read
    assert read is not None and read.flops.estimable
    assert read.flops.lo > 1.0 and read.wallclock.hi < 1.0  # fewer FLOPs, more seconds
    assert read.wallclock.value == pytest.approx(0.5 * read.flops.value)
    assert "wall-clock" in " ".join(f.text for f in result.findings)


def test_a_degenerate_resample_set_is_not_estimable() -> None:
    rng = np.random.default_rng(0)
    C = np.array([1e12, 2e12, 4e12, 8e12])
    L = (E + A * (C / C0) ** -ALPHA) * np.exp(rng.normal(0, 0.003, 4))
    fit = fit_power_law(C, L, groups=np.arange(4), n_boot=200)
    assert not fit.boot.estimable and "not estimable" in fit.boot.reason and fit.ci == {}
    frame = pd.DataFrame({"run": np.arange(4), "flops": C, "loss": L})
    curve = compute_multiplier(frame, frame.assign(loss=L * 1.01), [float(np.median(L))],
                               shared_exponent=False, n_boot=200)
    assert not curve.boot[0].estimable and np.isnan(curve.lo[0]) and np.isnan(curve.hi[0])


def test_the_failed_share_threshold_decides_estimability() -> None:
    n = 200
    ok = BootCheck(n, int(MAX_FAILED_SHARE * n) - 1, 10_000)
    bad = BootCheck(n, int(MAX_FAILED_SHARE * n) + 2, 10_000)
    assert ok.estimable and not bad.estimable and "failed" in bad.reason
    assert not BootCheck(n, 0, 35).estimable  # 4 runs: C(7, 4) = 35 distinct resamples
    both = BootCheck(n, int(MAX_FAILED_SHARE * n) + 2, 35).reason  # every reason is named
    assert "35 distinct resamples" in both and "bootstrap refits failed" in both


def test_one_seed_resamples_runs_two_seeds_resample_seeds_within_conditions() -> None:
    spec = AnalysisSpec.model_validate({"kind": "multiplier", "baseline": "base"})
    two = study("two", planted(1.2, 0.005), spec, AXES, n_boot=50)
    one = study("one", planted(1.2, 0.005, seeds=1), spec, AXES, n_boot=50)
    assert "resample seeds within each arm" in two.summary
    assert "resample runs within each arm" in one.summary
    # two seeds: 3 distinct resamples per arm, too few for an interval
    few = study("few", planted(1.2, 0.005, seeds=2), spec, AXES, n_boot=50)
    assert not few.multipliers[0].read.flops.estimable
    assert two.changes[0].noise.source == "seeds" and one.changes[0].noise.source == "conditions"


def test_lr_edges_are_found_per_arm_and_make_the_verdict_inconclusive() -> None:
    # pooled, the lr values run 0.003-0.03; the new arm's own grid is 0.01-0.03, and its best
    # (0.01) sits at its own edge although it is in the middle of the pooled values
    lrs = {"base": (0.003, 0.01, 0.03), "new": (0.01, 0.02, 0.03)}
    data = planted(1.3, noise=0.005, lrs=lrs)
    spec = AnalysisSpec(kind="multiplier", baseline="base", best_of="optim.lr")
    runs = select_best(annotate(data.runs, spec, AXES), spec.best_of)
    assert {arm for arm, _ in runs.edges} == {"new"} and len(runs.edges) == len(TOKENS)
    verdict, why = verdict_of(data, EFFECT, best_of="optim.lr")
    assert verdict is Verdict.INCONCLUSIVE and "edge" in why, why
    verdict, why = verdict_of(data, EFFECT, best_of="optim.lr", edge="allow")
    assert verdict is Verdict.AGREES, why


def test_noise_mde_and_seeds_needed() -> None:
    noise = noise_of(["a", "a", "b", "b"], [0.01, 0.03, -0.01, 0.01])
    assert noise.source == "seeds" and noise.df == 2
    assert noise.sd == pytest.approx(np.sqrt(2 * (0.01**2 + 0.01**2) / 2))
    assert noise_of(["a", "b", "c"], [0.0, 0.01, 0.02]).source == "conditions"
    # z quantiles would say 8 ((2.80 x 1)^2 = 7.85) and 11 ((3.24)^2 = 10.5); with t on n - 1 df:
    assert seeds_needed(0.01, 0.01) == 10  # (2.262 + 0.883) / sqrt(10) = 0.995; 9 gives 1.065
    assert seeds_needed(0.01, 0.01, equivalence=True) == 13  # (2.179 + 1.356) / sqrt(13) = 0.98
    # sd half the margin: z says 3 ((3.24 x 0.5)^2 = 2.6), yet 3 seeds' 95% t interval alone
    # is +/-1.24 margins wide; t says 5 ((2.776 + 1.533) / sqrt(5) x 0.5 = 0.96; 4 gives 1.2)
    assert seeds_needed(0.005, 0.01, equivalence=True) == 5


def test_paired_intervals_resample_seeds_not_budgets() -> None:
    """A seed's budgets share a trunk: a seed effect common to its budgets (planted) must widen
    the all-pairs interval to the spread of the seed means (t, seeds - 1 df), not shrink as if
    the 9 pairs were independent; the largest budget reads its own seeds' spread (wide here)."""
    seed_effect = {0: -0.02, 1: 0.0, 2: 0.02}
    spread = {"1M": 0.001, "2M": 0.001, "8M": 0.01}  # the largest budget is the noisy one
    pairs = [Pair(f"tokens={b}", s, b, seed_effect[s] + spread[b] * (s - 1), 0.0)
             for b in ("1M", "2M", "8M") for s in range(3)]
    change = paired_change("new", "base", pairs)
    means = [np.mean([p.rel_change for p in pairs if p.seed == s]) for s in range(3)]
    half = stats.t.ppf(0.975, 2) * np.std(means, ddof=1) / np.sqrt(3)
    assert change.overall.hi - change.overall.lo == pytest.approx(2 * half)
    top = [p.rel_change for p in pairs if p.budget == "8M"]
    assert change.noise.df == 2 and change.noise.sd == pytest.approx(np.std(top, ddof=1))
    assert change.mde == pytest.approx(mde_factor(2) * change.noise.sd / np.sqrt(3))
    assert mde_factor(2) > 5 > POWER_FACTOR  # few seeds: t quantiles, not z
    assert seed_mean_noise([0, 0], [0.1, 0.2]).df == 0  # one seed: no spread of seed means


def with_routing(data: Collected, collapsed: dict[str, int]) -> Collected:
    """``data`` with MoE curves: the first ``collapsed[arm]`` runs of an arm end with dead
    experts (collapsed), the others balanced."""
    curves = data.curves.copy()
    curves["moe/imbalance"] = 1.2
    curves["moe/dead_experts"] = 0.0
    for arm, n in collapsed.items():
        runs = data.runs.loc[data.runs["arm"] == arm, "run_id"].head(n)
        hit = curves["run_id"].isin(runs)
        curves.loc[hit, "moe/imbalance"] = 9.0
        curves.loc[hit & (curves["step"] == curves["step"].max()), "moe/dead_experts"] = 3.0
    return Collected(data.runs, curves)


def test_an_arm_whose_routing_collapsed_is_inconclusive_not_evidence() -> None:
    data = planted(1.3, noise=0.005)
    n_new = int((data.runs["arm"] == "new").sum())
    verdict, why = verdict_of(with_routing(data, {}), EFFECT)
    assert verdict is Verdict.AGREES, why
    assert f"routing healthy in {n_new}/{n_new} of" in why
    verdict, why = verdict_of(with_routing(data, {"new": n_new // 2 + 1}), EFFECT,
                              collapsed="inconclusive")
    assert verdict is Verdict.INCONCLUSIVE and "routing collapsed" in why, why
    verdict, why = verdict_of(with_routing(data, {"new": n_new // 2 + 1}), EFFECT)
    assert verdict is Verdict.AGREES and f"{n_new // 2 - 1}/{n_new} of new" in why, why
    result = study("planted", with_routing(data, {"new": 2}), AnalysisSpec.model_validate(
        {"kind": "multiplier", "baseline": "base"}), AXES, n_boot=20)
    assert "routing" in result.tables and int(result.tables["routing"]["collapsed"].sum()) == 2
    assert any("Collapsed:" in f.text for f in result.findings)
