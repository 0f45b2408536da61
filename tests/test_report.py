"""`make plots` end to end on a real SQLite MLflow store with planted scaling laws (CPU, seconds).

The store is built the way a submit builds it: a parent run per sweep tagged ``kind=sweep`` with
the resolved sweep as ``sweep.json`` (``harness.store.Store.open_sweep``), one child run per trial
through ``MLflowTracker`` with the trial's params and a loss curve. Curves follow
L = E + A (m C / C0)^-alpha with a per-arm compute multiplier m (Kimi K2 report, arXiv
2507.20534, section 2.3 form), so the report must recover the planted FLOP ratio.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analysis.collect import Collected
from analysis.points import annotate, fit_points, select_best
from analysis.report import make_all, val_note
from analysis.studies import study
from harness.config import AnalysisSpec, SweepConfig, TrialConfig
from harness.naming import run_name
from harness.store import Store, trial_params
from harness.tracking import TrialStatus

E, A, ALPHA, C0 = 2.0, 1.2, 0.3, 1e12
MUON_MULTIPLIER = 1.5
FLOPS_PER_TOKEN = 6e6
TRAIN = {"batch_tokens": 2048, "seq_len": 128, "warmup_steps": 2}


def planted_loss(trial: TrialConfig, flops: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The planted law: Muon needs 1/1.5 of AdamW's FLOPs; sparsity s gets m = 1 + 0.2 log2 s."""
    m = MUON_MULTIPLIER if trial.optim.name == "muon" else 1.0
    m *= 1 + 0.2 * np.log2(trial.model.sparsity)
    noise = np.exp(rng.normal(0, 0.002) + rng.normal(0, 0.001, flops.size))
    return (E + A * (m * flops / C0) ** -ALPHA) * noise


def log_sweep(store: Store, sweep: SweepConfig, rng: np.random.Generator) -> None:
    """A parent run with sweep.json and one finished child run per trial, with curves."""
    run = store.open_sweep(sweep)
    for trial in sweep.expand():
        tags = {"mlflow.parentRunId": run.parent_id, "sweep": sweep.name, "arm": trial.optim.arm}
        tracker = store.open_trial(run.experiment_id, trial.hash, run_name(trial, sweep), tags)
        tracker.log_params(trial_params(trial, None))
        steps = np.arange(1, trial.train.steps + 1)
        flops = steps * trial.train.batch_tokens * FLOPS_PER_TOKEN
        loss = planted_loss(trial, flops.astype(float), rng)
        for s, c, v in zip(steps, flops, loss, strict=True):
            if s % 4 and s != steps[-1]:
                continue
            tracker.log_metrics({
                "train/loss": float(v) * 1.01, "val/loss": float(v), "flops": float(c),
                "tokens": float(s * trial.train.batch_tokens),
                "attn/max_logit": 5.0 + 0.1 * s * (2 if trial.optim.name == "muon" else 1),
                "moe/imbalance": 1.0 + 1.0 / s}, step=int(s))
        tracker.log_metrics({"test/loss": float(loss[-1]) * 1.002}, step=int(steps[-1]))
        tracker.finish(TrialStatus.FINISHED)


def sweeps() -> list[SweepConfig]:
    """A multiplier sweep (6 budgets per arm), a smoke-sized curves sweep (4 trials, one budget)
    and a sparsity sweep with one arm (the joint law is not identified: FitError)."""
    base = {"train": {**TRAIN, "tokens": 16384}}
    return [
        SweepConfig.model_validate({
            "name": "mult", "description": "Muon vs AdamW, planted 1.5x.", "base": base,
            "grid": {"optim.name": ["adamw", "muon"],
                     "train.tokens": [16384, 24576, 32768, 49152, 65536, 98304]},
            "analysis": {"kind": "multiplier", "baseline": "adamw", "claim": {
                "text": "Muon needs fewer FLOPs", "kind": "effect", "arms": ["muon"]}}}),
        SweepConfig.model_validate({
            "name": "tiny", "base": {"train": {**TRAIN, "tokens": 32768}},
            "grid": {"model.moe.n_routed_experts": [4, 8], "optim.name": ["adamw", "muon"]}}),
        SweepConfig.model_validate({
            "name": "onearm", "base": base, "grid": {"train.tokens": [16384, 32768, 65536]},
            "analysis": {"kind": "sparsity", "arm": "sparsity"}}),
    ]


@dataclass(frozen=True)
class Made:
    store: Path
    out: Path
    paths: list[Path]
    report: str


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    root = tmp_path_factory.mktemp("plots")
    store = root / "store"
    store.mkdir()
    rng = np.random.default_rng(0)
    for sweep in sweeps():
        log_sweep(Store(f"sqlite:///{store / 'mlflow.db'}"), sweep, rng)
    out = root / "results"
    paths = make_all(None, refresh=True, uri=f"sqlite:///{store / 'mlflow.db'}", out_dir=out,
                     n_boot=100)
    return Made(store, out, paths, (out / "report.md").read_text())


def test_make_all_writes_figures_tables_and_report(made: Made) -> None:
    assert made.paths[-1] == made.out / "report.md"
    for name in ("mult", "tiny", "onearm"):
        assert f"## {name}" in made.report
        for figure in ("curves", "max_logit", "imbalance"):
            assert (made.out / name / f"{figure}.png").stat().st_size > 1000
        for csv in (made.out / name).glob("*.csv"):
            pd.read_csv(csv)
        runs = pd.read_csv(made.out / name / "runs.csv")  # the reported (test) loss is listed
        assert runs["final_test_loss"].notna().all() and "test split" in made.report
        assert (made.out / "cache" / f"{name}.sweep.json").exists()
    assert {p.name for p in made.paths} >= {"multipliers.png", "multipliers.csv", "fits.csv",
                                            "runs.csv", "final_losses.png", "report.md"}
    assert all(p.exists() for p in made.paths)


def test_header_names_the_sweeps_scored_on_the_old_val_set(made: Made) -> None:
    assert "old two-file" not in made.report  # every run here logged a test loss
    assert val_note([], 3) == ""
    assert val_note(["a", "b"], 2).startswith("Every loss below is a validation loss")
    mixed = val_note(["a"], 3)
    assert mixed.startswith("In 1 of 3 sweeps (a) every loss is") and "test split" in mixed


def test_report_recovers_the_planted_multiplier(made: Made) -> None:
    table = pd.read_csv(made.out / "mult" / "multipliers.csv")
    ok = table[table["reason"].isna() & table["not_estimable"].isna()]
    assert len(ok) >= 3 and (ok["arm"] == "muon").all() and ok["read_out"].sum() == 1
    assert ((ok["lo"] <= MUON_MULTIPLIER) & (ok["hi"] >= MUON_MULTIPLIER)).all(), ok
    np.testing.assert_allclose(ok["ratio"], MUON_MULTIPLIER, rtol=0.05)
    said = re.search(r"muon over adamw: pre-registered read-out: "
                     r"([\d.]+)x \(95% CI ([\d.]+)-([\d.]+)\) in FLOPs", made.report)
    assert said is not None, made.report
    ratio, lo, hi = map(float, said.groups())
    assert lo <= MUON_MULTIPLIER <= hi and lo <= ratio <= hi
    assert "Moonlight" in made.report  # the published number sits next to ours
    assert "one final point per run" in made.report  # 6 budgets per arm: final points


def test_small_sweep_gets_curves_and_says_which_points(made: Made) -> None:
    section = made.report.split("## tiny")[1]
    assert "val-loss points along 4 runs after warmup" in section
    assert "not cooled down" in section
    fits = pd.read_csv(made.out / "tiny" / "fits.csv")
    assert set(fits["arm"]) == {"adamw", "muon"}
    changes = pd.read_csv(made.out / "tiny" / "final_loss_changes.csv")
    assert len(changes) == 2 and (changes["rel_change"] < 0).all()  # muon is planted better


def test_fit_error_becomes_a_sentence(made: Made) -> None:
    section = made.report.split("## onearm")[1].split("\n## ")[0]
    assert "Sparsity law not fitted: a sparsity law needs >= 2 arms." in section
    assert "K2 (arXiv 2507.20534" in section


def test_second_call_works_from_the_cache_alone(made: Made, tmp_path: Path) -> None:
    out = tmp_path / "results"
    shutil.copytree(made.out / "cache", out / "cache")
    gone = f"sqlite:///{tmp_path / 'deleted' / 'mlflow.db'}"
    paths = make_all(["mult"], uri=gone, out_dir=out, n_boot=100)
    assert (out / "report.md").read_text() == made.report
    assert {p.parent.name for p in paths if p.suffix == ".png"} == {"mult", "tiny", "onearm"}
    make_all(None, uri=gone, out_dir=out, n_boot=100)
    assert (out / "report.md").read_text() == made.report
    assert not (tmp_path / "deleted").exists()
    with pytest.raises(LookupError, match="nosuch"):
        make_all(["nosuch"], uri=gone, out_dir=out, n_boot=0)


def synthetic(trials: list[dict[str, Any]], n_budgets: int, lrs: tuple[float, ...] = (0.01,),
              diverged: int = 0) -> Collected:
    """Runs and curves shaped like ``analysis.collect`` output (params under dotted keys, arm,
    sparsity), without MLflow; the last ``diverged`` trials diverge halfway."""
    rng = np.random.default_rng(1)
    runs, curves = [], []
    for i, override in enumerate(trials):
        for b in range(n_budgets):
            for lr in lrs:
                trial = TrialConfig.model_validate(
                    {**override, "optim": {**override.get("optim", {}), "lr": lr},
                     "train": {**TRAIN, "tokens": 16384 * 2**b}})
                run_id = f"{trial.hash}"
                steps = np.arange(1, trial.train.steps + 1)
                flops = steps * 2048 * FLOPS_PER_TOKEN
                loss = planted_loss(trial, flops.astype(float), rng)
                loss *= 1 + abs(np.log10(lr / 0.01)) / 10
                status = "diverged" if i >= len(trials) - diverged else "finished"
                if status == "diverged":
                    steps, flops, loss = steps[: len(steps) // 2], flops[: len(steps) // 2], (
                        loss[: len(steps) // 2])
                curve = pd.DataFrame({"run_id": run_id, "step": steps, "flops": flops,
                                      "tokens": steps * 2048.0, "val/loss": loss,
                                      "attn/max_logit": 5 + steps * (3 if "muon" in trial.optim.arm
                                                                     else 1)})
                if trial.optim.qk_clip_tau is not None:
                    curve["attn/max_logit"] = curve["attn/max_logit"].clip(
                        upper=trial.optim.qk_clip_tau * 1.05)
                    curve["attn/heads_clipped"] = (curve["attn/max_logit"] >
                                                   trial.optim.qk_clip_tau).astype(float)
                curves.append(curve)
                runs.append({"run_id": run_id, "name": run_id, "status": status,
                             "arm": trial.optim.arm, "sparsity": trial.model.sparsity,
                             "flops": float(flops[-1]), "tokens": float(steps[-1] * 2048),
                             "final_val_loss": float(loss[-1]) if status == "finished" else None,
                             **trial.flat()})
    return Collected(pd.DataFrame(runs), pd.concat(curves, ignore_index=True))


OPTIMIZERS = [{"optim": {"name": "adamw"}}, {"optim": {"name": "muon"}}]


def test_best_of_keeps_the_best_lr_per_arm_and_budget() -> None:
    data = synthetic(OPTIMIZERS, 3, lrs=(0.003, 0.01, 0.03))
    spec = AnalysisSpec(kind="multiplier", baseline="adamw", best_of="optim.lr")
    runs = select_best(annotate(data.runs, spec, ["optim.name", "train.tokens", "optim.lr"]),
                       spec.best_of)
    kept = runs.frame[runs.frame["selected"]]
    assert len(kept) == 6 and (kept["optim.lr"] == 0.01).all()
    assert runs.arm_axes == ("optim.name",) and runs.condition_axes == ("train.tokens",)
    # each budget's pick is named with its budget, smallest first
    assert any("Best `optim.lr`" in n and "adamw: tokens=16.384k 0.01, tokens=32.768k 0.01, "
               "tokens=65.536k 0.01;" in n for n in runs.notes)
    points = fit_points(runs, data.curves)
    assert points.source == "final" and len(points.frame) == 6


def test_selection_uses_val_and_reported_losses_use_test() -> None:
    """The lr is chosen on val; the fitted points are the chosen runs' test losses. Here the
    test losses rank the lrs the other way, so choosing on test would pick another lr."""
    data = synthetic(OPTIMIZERS, 3, lrs=(0.003, 0.01, 0.03))
    frame = data.runs.copy()
    frame["final_test_loss"] = 10.0 - frame["final_val_loss"]  # planted: a different ranking
    spec = AnalysisSpec(kind="multiplier", baseline="adamw", best_of="optim.lr")
    runs = select_best(annotate(frame, spec, ["optim.name", "train.tokens", "optim.lr"]),
                       spec.best_of)
    kept = runs.frame[runs.frame["selected"]]
    assert (kept["optim.lr"] == 0.01).all()  # the val optimum, as before
    assert (runs.frame["loss_split"] == "test").all()
    points = fit_points(runs, data.curves)
    assert sorted(points.frame["loss"]) == sorted(kept["final_test_loss"])
    assert "final test loss" in points.note
    frame.loc[frame.index[0], "final_test_loss"] = None  # one run without: report on val
    runs = annotate(frame, spec, ["optim.name", "train.tokens", "optim.lr"])
    assert (runs.frame["loss_split"] == "val").all()


def test_curve_points_drop_warmup_and_fit_failures_are_sentences() -> None:
    data = synthetic(OPTIMIZERS, 1)
    runs = annotate(data.runs, AnalysisSpec(), None)
    assert runs.condition_axes == ()
    points = fit_points(runs, data.curves)
    assert points.source == "curve" and len(points.frame) == 2 * 6  # 8 steps, 2 of warmup
    thin = Collected(data.runs, data.curves[data.curves["step"] >= 7])
    result = study("thin", thin, AnalysisSpec(kind="multiplier"), n_boot=20)
    text = " ".join(f.text for f in result.findings)
    assert "no power law fitted" in text and "No compute multiplier of muon over adamw" in text
    assert {"runs", "points", "fits"} <= set(result.tables)
    assert result.figures[0].name == "curves"


def test_sparsity_study_recovers_planted_ratios() -> None:
    trials = [{"model": {"moe": {"n_routed_experts": e, "top_k": 2}}} for e in (4, 8, 16)]
    data = synthetic(trials, 4)
    spec = AnalysisSpec(kind="sparsity", arm="sparsity")
    result = study("sparse", data, spec, ["model.moe.n_routed_experts", "train.tokens"],
                   n_boot=100)
    table = result.tables["multipliers"].set_index(["arm", "baseline"])
    for arm, truth in (("sparsity 4", 1.4 / 1.2), ("sparsity 8", 1.6 / 1.2)):
        row = table.loc[(arm, "sparsity 2")]
        assert row["lo"] <= truth <= row["hi"] and row["ratio"] == pytest.approx(truth, rel=0.03)
    said = [f for f in result.findings if f.text.startswith("Here sparsity 8 over sparsity 2: ")]
    assert len(said) == 1 and "in FLOPs" in said[0].text
    assert "the same at every L*" in said[0].text  # the joint law's m_s has no L*
    cross = [f.text for f in result.findings if f.text.startswith("Cross-check, not the read-out")]
    assert len(cross) == 2 and "sparsity 8 over sparsity 2 at " in cross[1]
    # the planted law shares its floor, so per-arm frontiers find the planted ratio too
    ratio = float(re.search(r"over sparsity 2 at ([\d.]+)x", cross[1]).group(1))
    assert ratio == pytest.approx(1.6 / 1.2, rel=0.1)
    assert said[0].reference is not None and "1.69x" in said[0].reference
    assert any("rise monotonically" in f.text and f.reference for f in result.findings)
    assert [j.name for j in result.figures][:2] == ["sparsity", "multipliers"]


def test_logits_study_reports_clipping_and_divergence() -> None:
    trials = [{"optim": {"name": "muon"}}, {"optim": {"name": "muon", "qk_clip_tau": 10.0}},
              {"optim": {"name": "adamw", "lr": 0.01}}]
    data = synthetic(trials, 2, diverged=1)
    result = study("logits", data, AnalysisSpec(kind="logits", baseline="muon"), n_boot=0)
    texts = [f.text for f in result.findings]
    assert result.figures[0].name == "max_logit"
    assert result.figures[0].data.lines == ((10.0, "QK-Clip tau = 10"),)
    peak = next(t for t in texts if t.startswith("Peak max attention logit"))
    assert "muonclip 10.5 (10.5-10.5)" in peak and "muon 41 (29-53)" in peak
    assert any(t.startswith("muonclip (QK-Clip tau = 10): ") for t in texts)
    assert any("2 runs diverged" in t for t in texts)
    table = result.tables["max_logit"]
    assert set(table["status"]) == {"finished", "diverged"} and table["tau"].max() == 10.0


def test_a_published_number_is_quoted_once_per_run_of_findings() -> None:
    from analysis.report import section
    from analysis.studies import Finding, Study

    findings = (Finding("a", "K2 says x"), Finding("b", "K2 says x"), Finding("c"),
                Finding("d", "K2 says x"), Finding("e", "Moonlight says y"))
    text = section(Study("s", "curves", "", "1 run.", findings, {}, ()), "s")
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert bullets == ["- a", "- b *Published: K2 says x.*", "- c",
                       "- d *Published: K2 says x.*", "- e *Published: Moonlight says y.*"]


def test_summary_row_gives_the_planted_multiplier_and_agrees(made: Made) -> None:
    """The claims table at the top reads the multiplier sweep: 1.5x planted, Muon claim agrees."""
    summary = made.report.split("## Summary")[1].split("\n## ")[0]
    row = next(line for line in summary.splitlines() if line.startswith("| mult |"))
    ratio, lo, hi = map(float, re.search(
        r"muon over adamw: ([\d.]+)x \(95% CI ([\d.]+)-([\d.]+)\) in FLOPs", row).groups())
    assert lo <= MUON_MULTIPLIER <= hi and lo <= ratio <= hi and lo > 1.0
    assert "| **agrees**: the interval excludes 1x on the claimed side" in row
    assert "MDE" in row and "final loss" in row
    assert made.report.index("## Summary") < made.report.index("## mult")


def test_logits_study_keeps_the_unclipped_arm_as_its_baseline() -> None:
    """qk_clip_tau None (plain Muon) is an arm of its own, the baseline of a logits study."""
    trials = [{"optim": {"name": "muon"}}, {"optim": {"name": "muon", "qk_clip_tau": 30}}]
    result = study("clip", synthetic(trials, 2), AnalysisSpec(kind="logits",
                                                              arm="optim.qk_clip_tau"), n_boot=0)
    runs = result.tables["runs"]
    assert runs["selected"].all() and set(runs["arm"]) == {"qk_clip_tau=none", "qk_clip_tau=30"}
    changes = result.tables["final_loss_changes"]
    assert set(changes["baseline"]) == {"qk_clip_tau=none"}
    (head,) = result.headlines
    assert "qk_clip_tau=none" in head.ours and head.verdict.startswith("agrees")


def test_results_are_logged_to_the_sweeps_parent_run(made: Made) -> None:
    store = Store(f"sqlite:///{made.store / 'mlflow.db'}")
    parent = store.parent("mult")
    listed = {a.path for a in store.client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/report.md", "results/multipliers.png", "results/runs.csv"} <= listed
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(store.client.download_artifacts(parent.info.run_id, "results/report.md",
                                                    tmp)).read_text()
    assert text.startswith("## mult") and "(./multipliers.png)" in text


def test_plots_keep_the_repositorys_sweeps_apart_from_a_users(
    made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweeps that sweeps/*.yaml defines go to results/, the user's own to results-local/."""
    from analysis.report import make_routed, shipped_sweeps

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "mult.yaml").write_text(
        "name: mult\nprofiles: {gpu: {resources: {gpu: 1}}}\n")
    assert shipped_sweeps() == {"mult", "mult-gpu"}
    routed = make_routed(None, uri=f"sqlite:///{made.store / 'mlflow.db'}", n_boot=0)
    assert set(routed) == {Path("results"), Path("results-local")}
    assert {p.parts[1] for p in routed[Path("results")] if p.suffix == ".png"} == {"mult"}
    assert {p.parts[1] for p in routed[Path("results-local")] if p.suffix == ".png"} == {
        "tiny", "onearm"}
    assert "## tiny" not in (tmp_path / "results" / "report.md").read_text()


def test_claim_where_reads_the_paired_change_at_the_claims_setting() -> None:
    """The clip helps only at a raised lr (planted -10%); read where the claim is made (the
    tuned lr) the paired change is ~0, read over every lr it is not."""
    trials = [{"optim": {"name": "muon"}}, {"optim": {"name": "muon", "qk_clip_tau": 30}}]
    data = synthetic(trials, 2, lrs=(0.01, 0.05))
    helped = data.runs["optim.qk_clip_tau"].notna() & (data.runs["optim.lr"] == 0.05)
    data.runs.loc[helped, "final_val_loss"] *= 0.9
    claim = {"text": "clip costs nothing", "kind": "no_penalty", "measure": "loss",
             "margin": 0.01, "arms": [30]}

    def read(where: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
        spec = AnalysisSpec(kind="logits", arm="optim.qk_clip_tau",
                            claim={**claim, "where": where})
        result = study("clip", data, spec, n_boot=0)
        runs_fitted.append(set(result.tables["fits"]["n_runs"]))
        return result.tables["final_loss_changes"], [f.text for f in result.findings]

    runs_fitted: list[set[int]] = []
    everywhere, _ = read({})
    tuned, texts = read({"optim.lr": 0.01})
    assert runs_fitted == [{4}, {2}]  # the per-arm laws, too, fit only the claim's setting
    assert any("laws fit only the runs with optim.lr = 0.01" in t for t in texts)
    assert everywhere["rel_change"].min() < -0.09 and len(everywhere) == 4
    assert len(tuned) == 2 and tuned["condition"].str.startswith("lr=0.01").all()
    assert tuned["rel_change"].abs().max() < 0.01
    assert any("read only the runs with optim.lr = 0.01" in t for t in texts)
