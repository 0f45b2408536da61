"""The summary verdicts: intervals and paired loss changes against the direction of a claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.claims import (
    LOGITS_CLAIM,
    logits_headline,
    loss_verdict,
    multiplier_headlines,
    summary_table,
    verdict,
)
from analysis.studies import Study


def fake_study(**tables: pd.DataFrame) -> Study:
    return Study("s", "multiplier", "", "", (), tables, ())


@pytest.mark.parametrize(("expect", "lo", "hi", "starts"), [
    ("above", 1.1, 1.4, "agrees"), ("above", 0.7, 0.9, "disagrees"),
    ("above", 0.9, 1.2, "no detectable"), ("below", 0.7, 0.9, "agrees"),
    ("below", 1.1, 1.3, "disagrees"), ("near", 0.9, 1.1, "agrees"),
    ("near", 1.05, 1.3, "disagrees"), ("above", np.nan, 1.2, "no interval"),
])
def test_verdict_reads_the_interval_against_one(expect, lo, hi, starts) -> None:
    assert verdict(expect, lo, hi).startswith(starts)


def test_loss_verdict_reads_the_sign_of_every_pair() -> None:
    assert loss_verdict("above", -0.2, -0.01) == "agrees"  # lower loss in every pair
    assert loss_verdict("above", 0.01, 0.2) == "disagrees"
    assert loss_verdict("above", -0.1, 0.1).startswith("no consistent")
    assert loss_verdict("near", -0.1, 0.1).startswith("agrees")
    assert loss_verdict("near", 0.01, 0.1).startswith("disagrees")


def test_multiplier_headline_prefers_an_answered_middle_target() -> None:
    table = pd.DataFrame({
        "arm": ["muon"] * 3 + ["muonclip"], "baseline": "adamw",
        "L_star": [2.0, 2.2, 2.4, 2.2], "ratio": [1.2, 1.3, 9.0, 0.8],
        "lo": [1.1, 1.15, np.nan, 0.7], "hi": [1.3, 1.45, np.nan, 0.95],
        "reason": [None, None, "extrapolated", None]})
    rows = multiplier_headlines(fake_study(multipliers=table), "arm", "adamw")
    assert [r.ours.split(":")[0] for r in rows] == ["muon over adamw", "muonclip over adamw"]
    assert "1.30x (1.15-1.45)" in rows[0].ours and rows[0].verdict == "agrees"
    assert rows[0].differ == "" and rows[1].verdict == "disagrees" and rows[1].differ


def test_multiplier_headline_falls_back_to_paired_losses() -> None:
    changes = pd.DataFrame({"arm": ["muon", "muon"], "baseline": "adamw",
                            "rel_change": [-0.15, -0.05]})
    (row,) = multiplier_headlines(fake_study(final_loss_changes=changes), "arm", "adamw")
    assert "-10.00%" in row.ours and "no multiplier" in row.ours and row.verdict == "agrees"


def test_logits_headline_needs_growth_without_clip_and_a_held_cap() -> None:
    logits = pd.DataFrame({"arm": ["tau=none", "tau=none", "tau=30", "tau=100"],
                           "peak": [400.0, 600.0, 50.0, 160.0],  # pre-clip: above tau early
                           "last_quarter_mean": [300.0, 350.0, 31.0, 101.0],
                           "tau": [np.nan, np.nan, 30, 100]})
    (row,) = logits_headline(fake_study(max_logit=logits), "tau=none")
    assert row.claim == LOGITS_CLAIM and row.verdict.startswith("agrees")
    assert "tau=none 500 peak, 325 late" in row.ours
    over = logits.assign(last_quarter_mean=[300.0, 350.0, 45.0, 101.0])
    assert logits_headline(fake_study(max_logit=over), "tau=none")[0].verdict.startswith(
        "disagrees")
    low = logits.assign(peak=[20.0, 25.0, 20.0, 20.0], last_quarter_mean=20.0)
    assert logits_headline(fake_study(max_logit=low), "tau=none")[0].verdict.startswith("partly")


def test_summary_table_escapes_pipes() -> None:
    rows = multiplier_headlines(fake_study(final_loss_changes=pd.DataFrame(
        {"arm": ["muon"], "baseline": "adamw", "rel_change": [-0.1]})), "arm", "adamw")
    table = summary_table(rows)
    assert table.count("\n") == 2 and all(line.count("|") == 6 for line in table.splitlines())
    assert summary_table([]) == ""


def test_an_iso_token_claim_is_judged_on_paired_losses_next_to_the_multiplier() -> None:
    mult = pd.DataFrame({"arm": ["n_heads=8"], "baseline": "n_heads=4", "L_star": [1.5],
                         "ratio": [0.7], "lo": [0.6], "hi": [0.8], "reason": [None]})
    changes = pd.DataFrame({"arm": ["n_heads=8"] * 3, "baseline": "n_heads=4",
                            "rel_change": [-0.02, -0.01, -0.005]})
    study = fake_study(multipliers=mult, final_loss_changes=changes)
    (row,) = multiplier_headlines(study, "model.attention.n_heads", "n_heads=4")
    assert row.verdict == "agrees"  # lower loss at equal tokens in every pair
    assert "at equal tokens" in row.ours and "0.70x (0.60-0.80)" in row.ours
