"""Checks a fitted law must pass before a reader trusts it: a held-out check that predicts the
top budget from the rest, and a fitted floor read against a synthetic language's known entropy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from analysis.comparisons import floor_text, known_floor
from analysis.results import Estimate
from analysis.studies import holdout_text
from harness.data.synthetic import synthetic_entropy


def test_the_held_out_check_leaves_out_every_seed_of_the_top_budget() -> None:
    flops = np.repeat([1e12, 2e12, 4e12, 8e12], 3)  # 4 budgets x 3 seeds, one point per run
    loss = 1.0 + 3e3 * flops**-0.3 * (1 + 0.001 * np.tile([-1, 0, 1], 4))
    g = pd.DataFrame({"run": [f"r{i}" for i in range(12)], "flops": flops, "loss": loss})
    row: dict[str, Any] = {}
    text = holdout_text(g, row)
    assert "without the 3 runs at its largest compute, the law predicts them" in text
    assert row["holdout_max_abs_rel_error"] < 0.01  # a true power law extrapolates
    same = g.assign(flops=1e12)
    assert holdout_text(same, {}) == " No held-out check (every run has the same compute)."


def test_a_synthetic_languages_known_floor_checks_the_fitted_floor() -> None:
    lang = {"data.corpus": "synthetic", "data.synthetic_vocab": 16, "data.synthetic_order": 1,
            "data.synthetic_branching": 2, "data.synthetic_seed": 0, "data.synthetic_topics": 4,
            "data.synthetic_doc_tokens": 32}
    runs = pd.DataFrame([lang, lang])
    floor = known_floor(runs)
    assert floor == pytest.approx(synthetic_entropy(16, 1, 2, 0, 4, 32)) and 0 < floor < np.log(20)
    assert known_floor(runs.assign(**{"data.synthetic_seed": [0, 1]})) is None  # two languages
    assert known_floor(runs.assign(**{"data.corpus": "stdlib"})) is None
    below = floor_text(Estimate(0.7, 0.3, 1.0), 1.12)
    assert "whole interval of E lies below it" in below and "not the irreducible loss" in below
    assert "reaches it" in floor_text(Estimate(1.0, 0.8, 1.2), 1.12)
    assert "at or above it" in floor_text(Estimate(1.2, 1.15, 1.3), 1.12)
