"""Trace summaries (``analysis.telemetry``): what the report says of expert-load imbalance."""

from __future__ import annotations

import pandas as pd

from analysis.points import annotate
from analysis.telemetry import imbalance_summary
from harness.config import AnalysisSpec


def _imbalance(late_spike: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two runs per arm, load logged every 1k tokens: 6 at initialisation, falling to ~1.2;
    with ``late_spike`` one run of arm 8 spikes to 9 at 6k tokens."""
    runs, curves = [], []
    for arm in (1, 8):
        for seed in (0, 1):
            run = f"e{arm}-s{seed}"
            runs.append({"run_id": run, "name": run, "status": "finished", "arm": arm,
                         "model.moe.n_groups": arm, "seed": seed, "train.tokens": 8e3,
                         "tokens": 8e3, "flops": 8e9, "final_val_loss": 2.0})
            for k in range(1, 9):
                value = 6.0 / k + 1.0
                if late_spike and arm == 8 and seed == 1 and k == 6:
                    value = 9.0
                curves.append({"run_id": run, "step": k, "tokens": 1e3 * k,
                               "moe/imbalance": value})
    return pd.DataFrame(runs), pd.DataFrame(curves)


def _sentence(late_spike: bool) -> str:
    frame, curves = _imbalance(late_spike)
    spec = AnalysisSpec(kind="multiplier", arm="model.moe.n_groups", baseline=1)
    summary = imbalance_summary(annotate(frame, spec, ["model.moe.n_groups"]), curves)
    assert summary is not None
    return summary.sentences[0][0]


def test_imbalance_says_how_many_peaks_are_the_initial_window() -> None:
    assert "by arm (median over the 4 runs; range)" in _sentence(False)
    assert "in 4 of 4 runs the peak is the first logged window" in _sentence(False)
    # a peak in training is not counted as the initial one
    assert "in 3 of 4 runs the peak is the first logged window" in _sentence(True)
