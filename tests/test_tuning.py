"""Tuned settings (``analysis.best_of``): several axes chosen together per arm and budget on
val, an optimum at the edge of an axis's own grid flagged, and bad lists refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.points import annotate, select_best
from analysis.telemetry import variants
from harness.config import AnalysisSpec


def coordinate_runs(adamw_lr_best: float) -> pd.DataFrame:
    """AdamW on a 4-point lr grid; Muon tuned coordinate-wise: its lr on 4 points at
    adamw_lr 0.01, then adamw_lr on 0.003 / 0.03 at lr 0.02. Planted optima: AdamW lr 0.004,
    Muon lr 0.02 and adamw_lr ``adamw_lr_best``; two budgets, one seed."""
    rows = [("adamw", lr, None) for lr in (0.001, 0.002, 0.004, 0.008)]
    rows += [("muon", lr, 0.01) for lr in (0.005, 0.01, 0.02, 0.04)]
    rows += [("muon", 0.02, a) for a in (0.003, 0.03)]
    frame = []
    for tokens in (1e6, 2e6):
        for name, lr, adamw_lr in rows:
            miss = np.log10(lr / (0.004 if name == "adamw" else 0.02)) ** 2
            if adamw_lr is not None:
                miss += np.log10(adamw_lr / adamw_lr_best) ** 2
            loss = 2.0 + (0.1 if name == "adamw" else 0.0) + miss - 0.05 * np.log2(tokens / 1e6)
            frame.append({"run_id": f"{name}-{lr}-{adamw_lr}-{tokens:g}", "status": "finished",
                          "arm": name, "optim.name": name, "optim.lr": lr,
                          "optim.adamw_lr": adamw_lr, "train.tokens": tokens,
                          "tokens": tokens, "flops": tokens * 1e6, "final_val_loss": loss})
    return pd.DataFrame(frame)


def test_best_of_several_axes_tunes_them_together_and_flags_an_edge_on_any() -> None:
    spec = AnalysisSpec(kind="multiplier", baseline="adamw",
                        best_of=["optim.lr", "optim.adamw_lr"])
    assert spec.tuned == ("optim.lr", "optim.adamw_lr")
    axes = ["optim.name", "train.tokens", "optim.lr", "optim.adamw_lr"]
    runs = select_best(annotate(coordinate_runs(0.01), spec, axes), spec.tuned)
    kept = runs.frame[runs.frame["selected"]].set_index("optim.name")
    assert set(kept.loc["adamw", "optim.lr"]) == {0.004}
    assert set(kept.loc["muon", "optim.lr"]) == {0.02}
    assert set(kept.loc["muon", "optim.adamw_lr"]) == {0.01}
    assert runs.condition_axes == ("train.tokens",) and runs.edges == ()
    assert any("(lr=0.02, adamw_lr=0.01)" in n and "adamw: tokens=1M (lr=0.004)" in n
               for n in runs.notes)
    assert set(variants(runs, spec.tuned)) >= {"lr=0.004", "lr=0.02, adamw_lr=0.03"}
    # Muon searched 6 settings per budget, AdamW 4: the report says so
    assert any("adamw 4, muon 6 settings tried per cell" in n for n in runs.notes), runs.notes
    assert any(n.startswith("The search is uneven: muon tried 6") for n in runs.notes)
    frame = coordinate_runs(0.01)
    frame = frame[~frame["optim.adamw_lr"].isin([0.003, 0.03])]  # 4 settings for each arm
    even = select_best(annotate(frame, spec, axes), spec.tuned)
    assert any("; 4 settings tried per cell" in n for n in even.notes), even.notes
    assert not any("uneven" in n for n in even.notes)
    # the adamw_lr optimum lies beyond the values tried: muon's best sits at that axis's edge
    runs = select_best(annotate(coordinate_runs(0.1), spec, axes), spec.tuned)
    kept = runs.frame[runs.frame["selected"]].set_index("optim.name")
    assert set(kept.loc["muon", "optim.adamw_lr"]) == {0.03}
    assert {arm for arm, _ in runs.edges} == {"muon"} and len(runs.edges) == 2
    assert any("(`optim.adamw_lr`)" in n for n in runs.notes), runs.notes


def test_best_of_rejects_an_empty_or_repeated_list() -> None:
    for bad in ([], ["optim.lr", "optim.lr"]):
        with pytest.raises(ValueError, match="best_of"):
            AnalysisSpec(kind="multiplier", best_of=bad)
