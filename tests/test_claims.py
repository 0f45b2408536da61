"""The verdict rules (``analysis.claims``): declared claims read against typed results."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from analysis.claims import cap_headline, headlines, interval_verdict, judge, summary_table
from analysis.inference import Noise
from analysis.results import (
    ArmLogits,
    Estimate,
    Evidence,
    Logits,
    Multiplier,
    MultiplierAt,
    Pair,
    PairedChange,
)
from analysis.wording import Verdict, paired_text, percent, times
from harness.config.sweep import AnalysisSpec, ClaimSpec, SweepConfig

EFFECT = ClaimSpec(text="x is better", kind="effect", arms=["a"], published=1.3)
WORSE = ClaimSpec(text="x is worse", kind="effect", direction="worse", arms=["a"])
SAME = ClaimSpec(text="no penalty", kind="no_penalty", margin=0.1, arms=["a"])
LOSS = ClaimSpec(text="lower loss", kind="effect", measure="loss", arms=["a"], published=-0.01)
LOSS_SAME = ClaimSpec(text="no loss penalty", kind="no_penalty", measure="loss", margin=0.01,
                      arms=["a"])


@pytest.mark.parametrize(("claim", "lo", "hi", "expected", "said"), [
    (LOSS_SAME, -0.0108, -0.0007, Verdict.INCONCLUSIVE,
     "crosses only the margin's better edge (-1.0%): a penalty beyond +1.0% is ruled out; the "
     "interval excludes no change"),
    (LOSS_SAME, -0.02, 0.005, Verdict.INCONCLUSIVE, "ruled out; the declared rule asks"),
    (LOSS_SAME, -0.03, -0.02, Verdict.DISAGREES, "entirely beyond the margin's better edge"),
    (SAME, 1.05, 1.3, Verdict.INCONCLUSIVE, "better edge (1.10x): a penalty beyond 0.90x"),
    (LOSS_SAME, -0.005, 0.02, Verdict.INCONCLUSIVE, None),   # the penalty side: no note
    (SAME, 0.85, 1.05, Verdict.INCONCLUSIVE, None), (SAME, 0.8, 1.3, Verdict.INCONCLUSIVE, None),
])
def test_no_penalty_says_when_only_the_better_side_leaves_the_margin(
        claim: ClaimSpec, lo: float, hi: float, expected: Verdict, said: str | None) -> None:
    """The declared rule (equivalence) decides; the text says when a penalty is ruled out."""
    verdict, reason = interval_verdict(claim, lo, hi)
    assert verdict is expected
    assert (said in reason) if said else "better edge" not in reason, reason


@pytest.mark.parametrize(("claim", "lo", "hi", "expected"), [
    (EFFECT, 1.1, 1.4, Verdict.AGREES), (EFFECT, 0.7, 0.9, Verdict.DISAGREES),
    (EFFECT, 0.9, 1.2, Verdict.INCONCLUSIVE), (WORSE, 0.7, 0.9, Verdict.AGREES),
    (WORSE, 1.1, 1.3, Verdict.DISAGREES),
    (SAME, 0.92, 1.08, Verdict.AGREES),          # inside 0.9-1.1x
    (SAME, 0.95, 1.2, Verdict.INCONCLUSIVE),     # spans 1x but crosses the margin: not "agrees"
    (SAME, 0.6, 0.85, Verdict.DISAGREES), (SAME, 1.15, 1.3, Verdict.DISAGREES),
    (LOSS, -0.03, -0.01, Verdict.AGREES),        # lower loss is better
    (LOSS, 0.01, 0.03, Verdict.DISAGREES), (LOSS, -0.02, 0.01, Verdict.INCONCLUSIVE),
    (LOSS_SAME, -0.005, 0.008, Verdict.AGREES), (LOSS_SAME, -0.02, 0.005, Verdict.INCONCLUSIVE),
    (LOSS_SAME, 0.012, 0.05, Verdict.DISAGREES),
])
def test_interval_verdicts(claim: ClaimSpec, lo: float, hi: float, expected: Verdict) -> None:
    assert interval_verdict(claim, lo, hi)[0] is expected


def test_an_effect_verdict_says_where_the_published_size_lies() -> None:
    assert interval_verdict(EFFECT, 1.75, 2.58)[1].endswith("the published 1.30x lies below it")
    assert interval_verdict(EFFECT, 1.1, 1.4)[1].endswith("the published 1.30x lies inside it")
    assert interval_verdict(LOSS, -0.03, -0.02)[1].endswith("the published -1.0% lies above it")
    assert "published" not in interval_verdict(WORSE, 0.7, 0.9)[1]  # none declared
    other = EFFECT.model_copy(update={"published_for": "48 over 32"})
    assert interval_verdict(other, 1.1, 1.4)[1].endswith(
        "the published 1.30x is for 48 over 32, another comparison (it lies inside this interval)")


def multiplier(lo: float, hi: float, value: float = 1.0, reason: str = "") -> Multiplier:
    flops = Estimate(value, lo, hi, reason, "bootstrap", 0.05)
    at = MultiplierAt(1.5, flops, flops.scaled(0.5))
    return Multiplier("a", "b", "separate exponents", (at,), 0.5, at)


def change(values: list[float], sd: float = 0.01) -> PairedChange:
    pairs = tuple(Pair("tokens=1M", s, "1M", v, 0.0) for s, v in enumerate(values))
    mean = sum(values) / len(values)
    est = Estimate(mean, mean - 0.02, mean + 0.02, "", "t", sd)
    return PairedChange("a", "b", pairs, est, est, "1M", Noise(sd, 3, "seeds"), 2.8 * sd,
                        len(values), "tokens=1M")


def test_identical_pairs_say_so_instead_of_a_zero_width_interval() -> None:
    assert "the same final loss in all 3 pairs" in paired_text(change([0.0, 0.0, 0.0], sd=0.0))
    text = paired_text(change([0.0, 0.001, 0.0]))
    assert "same final loss" not in text and "over all 3 pairs" in text


def test_not_estimable_is_inconclusive_and_never_a_number() -> None:
    m = multiplier(float("nan"), float("nan"), 1.23, "not estimable: 35% of 200 refits failed")
    verdict, why = judge(EFFECT, Evidence("a", "b", m, change([0.0])))
    assert verdict is Verdict.INCONCLUSIVE and "not estimable" in why
    assert "1.23" not in times(m.read.flops) and times(m.read.flops).startswith("not estimable")
    assert percent(Estimate(0.05, reason="not estimable: x")).startswith("not estimable")
    (row,) = headlines("s", EFFECT, [Evidence("a", "b", m, change([0.0]))])
    assert "1.23" not in row.ours and row.differ == EFFECT.differ


def test_a_grid_edge_makes_the_verdict_inconclusive_unless_allowed() -> None:
    ev = Evidence("a", "b", multiplier(1.2, 1.5, 1.3), change([0.0]), ("tokens=1M",))
    assert judge(EFFECT, ev)[0] is Verdict.INCONCLUSIVE
    assert "edge" in judge(EFFECT, ev)[1]
    assert judge(EFFECT, ev, edge="allow")[0] is Verdict.AGREES
    # a loss read-out uses only the cells at the largest budget
    elsewhere = Evidence("a", "b", None, change([-0.05, -0.04]), ("tokens=500k",))
    assert judge(LOSS, elsewhere)[0] is Verdict.AGREES


def test_headline_shows_the_paired_change_and_power_beside_the_read_out() -> None:
    (row,) = headlines("s", EFFECT, [Evidence("a", "b", multiplier(1.2, 1.5, 1.3),
                                              change([-0.02, -0.03]))])
    assert row.verdict is Verdict.AGREES and row.differ == ""
    assert "1.30x (95% CI 1.20-1.50) in FLOPs" in row.ours and "wall-clock" in row.ours
    assert "final loss" in row.beside and "largest common budget" in row.beside
    mde = math.exp(2.80 * 0.05)
    assert f"MDE {mde:.2f}x" in row.power and "seeds for the published effect" in row.power
    table = summary_table([row])
    assert table.count("\n") == 2 and all(line.count("|") == 8 for line in table.splitlines())
    assert summary_table([]) == ""


def test_cap_headline_needs_growth_without_clip_and_a_held_cap() -> None:
    arms = (ArmLogits("none", 500.0, 325.0, float("nan")), ArmLogits("tau=30", 50.0, 31.0, 30.0),
            ArmLogits("tau=100", 160.0, 101.0, 100.0))
    assert cap_headline("s", Logits("none", arms), "").verdict is Verdict.AGREES
    over = (*arms[:1], ArmLogits("tau=30", 50.0, 45.0, 30.0), arms[2])
    assert cap_headline("s", Logits("none", over), "").verdict is Verdict.DISAGREES
    low = (ArmLogits("none", 20.0, 20.0, float("nan")), *arms[1:])
    assert cap_headline("s", Logits("none", low), "").verdict is Verdict.INCONCLUSIVE


def test_cap_headline_reads_each_condition_never_a_median_across_them() -> None:
    """At the tuned lr nothing grows; at the raised lr plain Muon runs away. A median over both
    lrs would put tau 100's late logit at 85 (held); per condition it is 140 (not held)."""
    def cell(lr: str, none: float, tau100_late: float) -> tuple[ArmLogits, ...]:
        return (ArmLogits("none", none, none, float("nan"), lr),
                ArmLogits("tau=100", min(none, 150.0), tau100_late, 100.0, lr))

    held = Logits("none", (*cell("lr=0.02", 33.0, 30.0), *cell("lr=0.05", 700.0, 110.0)))
    row = cap_headline("s", held, "")
    assert row.verdict is Verdict.AGREES and "(at lr=0.05)" in row.reason
    assert "at lr=0.02: none 33 peak" in row.ours and "at lr=0.05: none 700 peak" in row.ours
    broken = Logits("none", (*cell("lr=0.02", 33.0, 30.0), *cell("lr=0.05", 700.0, 140.0)))
    assert cap_headline("s", broken, "").verdict is Verdict.DISAGREES


def test_claims_are_declared_and_validated() -> None:
    spec = AnalysisSpec.model_validate({"kind": "multiplier", "claim": {
        "text": "t", "kind": "no_penalty", "margin": 0.05, "arms": [1, 0]}})
    assert spec.claim is not None and spec.claim.read_at == "largest_budget"
    with pytest.raises(ValidationError, match="kind"):
        AnalysisSpec.model_validate({"claim": {"text": "t", "kind": "maybe", "arms": [1]}})
    with pytest.raises(ValidationError, match="curves"):
        AnalysisSpec.model_validate({"claim": {"text": "t", "kind": "effect", "arms": [1]}})
    with pytest.raises(ValidationError, match="logits"):
        AnalysisSpec.model_validate({"kind": "logits", "claim": {
            "text": "t", "kind": "effect", "arms": [1]}})
    with pytest.raises(ValidationError, match="margin"):
        ClaimSpec(text="t", kind="no_penalty", margin=0, arms=[1])


def test_claim_where_names_a_grid_value_of_a_loss_claim() -> None:
    claim = {"text": "t", "kind": "no_penalty", "measure": "loss", "arms": [30]}
    base = {"name": "clip", "grid": {"optim.lr": [0.02, 0.05], "optim.qk_clip_tau": [None, 30]},
            "analysis": {"kind": "logits", "arm": "optim.qk_clip_tau"}}

    def sweep(where: dict[str, Any]) -> SweepConfig:
        return SweepConfig.model_validate(
            {**base, "analysis": {**base["analysis"], "claim": {**claim, "where": where}}})

    assert sweep({"optim.lr": 0.02}).analysis.claim.where == {"optim.lr": 0.02}
    with pytest.raises(ValidationError, match=r"analysis\.claim\.where\.optim\.momentum: not a "
                       "grid or zip key"):
        sweep({"optim.momentum": 0.9})
    with pytest.raises(ValidationError, match=r"analysis\.claim\.where\.optim\.lr: 0\.03 is not "
                       r"among the axis values \[0\.02, 0\.05\]"):
        sweep({"optim.lr": 0.03})
    with pytest.raises(ValidationError, match="only a loss claim"):
        ClaimSpec(text="t", kind="effect", arms=[1], where={"optim.lr": 0.02})
