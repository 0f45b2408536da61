"""The figures a study asks for, from the committed parquet caches of real sweeps (CPU, seconds):
each says what it shows in its title, reads in natural order and names what differs."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from matplotlib.axes import Axes

from analysis.collect import Collected
from analysis.plots import figure_for
from analysis.report import sweep_info
from analysis.studies import FigureJob, Study, study

CACHE = Path(__file__).parents[1] / "results" / "cache"


def cached_study(name: str) -> Study:
    """``name``'s study from the cache, as ``make plots`` runs it (without bootstrap)."""
    if not (CACHE / f"{name}.runs.parquet").exists():
        pytest.skip(f"no cached sweep {name}")
    info = sweep_info(name, None, CACHE, fetch=False)
    collected = Collected(pd.read_parquet(CACHE / f"{name}.runs.parquet"),
                          pd.read_parquet(CACHE / f"{name}.curves.parquet"))
    return study(name, collected, info.spec, info.axes, info.description, n_boot=0)


def drawn(job: FigureJob) -> Axes:
    fig = figure_for(job.draw, job.data)
    fig.canvas.draw()
    return fig.axes[0]


@pytest.fixture(scope="module")
def sparsity() -> Study:
    return cached_study("sparsity")


TITLES = {
    "sparsity": "sparsity: loss vs training FLOPs, joint sparsity law",
    "multipliers": "sparsity: compute multiplier over sparsity 1",
    "curves": "sparsity: loss vs training FLOPs, power law per arm",
    "final_losses": "sparsity: final test loss by arm and budget",
    "max_logit": "sparsity: max attention logit over training",
    "imbalance": "sparsity: expert-load imbalance over training",
}


def test_every_figure_of_a_study_has_its_own_title(sparsity: Study) -> None:
    jobs = {job.name: job for job in sparsity.figures}
    assert set(jobs) == set(TITLES)
    for name, job in jobs.items():
        assert drawn(job).get_title() == TITLES[name]
    # the sparsity re-run logged test losses: the fit points (markers) and bars are test losses
    assert drawn(jobs["curves"]).get_ylabel() == "loss: val curves (lines), final test (markers)"
    assert drawn(jobs["final_losses"]).get_ylabel().startswith("final test loss")
    for other in ("smoke", "muonclip", "optimizers"):
        titles = [drawn(job).get_title() for job in cached_study(other).figures]
        assert len(set(titles)) == len(titles), titles
        assert all(t.startswith(f"{other}: ") and t != f"{other}: curves" for t in titles)


def test_budgets_and_arms_read_in_natural_order(sparsity: Study) -> None:
    jobs = {job.name: job for job in sparsity.figures}
    bars = drawn(jobs["final_losses"])
    assert [t.get_text() for t in bars.get_xticklabels()] == [
        "tokens=1M", "tokens=2M", "tokens=4M", "tokens=8M"]
    assert [t.get_text() for t in bars.get_legend().get_texts()] == [
        f"sparsity {s}" for s in (1, 8, 32)]  # not "1, 32, 8"
    assert [t.get_text() for t in drawn(jobs["multipliers"]).get_xticklabels()] == [
        f"sparsity {s}" for s in (8, 32)]


def test_smoke_figures_tell_the_expert_counts_of_an_optimizer_apart() -> None:
    smoke = cached_study("smoke")
    for job in smoke.figures:
        if job.name == "final_losses":
            continue
        ax = drawn(job)
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        named = [f"{arm}, n_routed_experts={e}" for arm in ("adamw", "muon") for e in (4, 8)]
        assert all(n in texts for n in named), (job.name, texts)
        looks = {(matplotlib.colors.to_hex(h.get_color()), h.get_linestyle())
                 for h, t in zip(ax.get_legend().legend_handles, texts, strict=True)
                 if t in named}
        assert len(looks) == 4, job.name
