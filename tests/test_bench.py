"""The bench command: toy-size run writes every case and goal; timing and goal arithmetic.

Nothing here is timed against a target: speed goals are judged by ``harness bench`` itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from harness.bench import run_bench
from harness.bench.prefix_sharing import SWEEP, scaled_sweep, shipped_ratio
from harness.bench.report import GOAL_KEYS, judge, render
from harness.bench.run import DOCS
from harness.bench.scheduling import efficiency, sweep_spec
from harness.bench.timing import Summary, interleaved, paired_ratio
from harness.config import SweepConfig
from harness.config.files import read_yaml
from harness.prefix import plan_sharing

pytest.importorskip("transformers")

GOALS = {"moe_vs_hf", "moe_overhead", "mfu", "train_vs_hf", "muon_vs_torch",
         "tracking_overhead", "sched_efficiency", "prefix_tokens", "prefix_wall", "dp_step",
         "dp_ns_split"}
NOT_TINY = {"sched_efficiency", "prefix_tokens", "prefix_wall"}  # Ray cases: not in tiny


def test_tiny_bench_writes_every_case_and_goal(tmp_path: Path) -> None:
    threads_before = torch.get_num_threads()
    result = run_bench("cpu", out_dir=tmp_path, tiny=True, threads=2, scheduling=False)
    assert torch.get_num_threads() == threads_before  # the bench restores torch's threads
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["goals"] == result["goals"] and not result["errors"]
    assert {g["key"] for g in on_disk["goals"]} == GOALS
    for g in on_disk["goals"]:
        expected = None if g["key"] in NOT_TINY else g["met"]
        assert g["met"] is expected and (g["met"] is None) == (g["value"] is None), g
    # cases 1 and 2 ran at a sweep trial's 1 thread and at all (here 2), judged at each
    per_threads = {(g["key"], g["threads"]) for g in on_disk["goals"]}
    for key in ("moe_vs_hf", "moe_overhead", "mfu", "train_vs_hf"):
        assert {(key, 1), (key, 2)} <= per_threads
    assert on_disk["meta"]["plan"]["threads"] == [1, 2]
    cases = on_disk["cases"]
    assert set(cases) == {"moe_layer", "train_step", "muon", "tracking", "scheduling", "prefix",
                          "data_parallel"}
    assert "skipped" in cases["scheduling"] and "skipped" in cases["prefix"]
    for name in ("moe_layer", "train_step"):
        assert cases[name]["threads"] == [1, 2]
        assert {k: r["threads"] for k, r in cases[name]["by_threads"].items()} == {"1": 1, "2": 2}
    for moe in cases["moe_layer"]["by_threads"].values():
        assert {"ours", "naive", "dense", "hf_eager", "hf_grouped_mm"} <= set(moe["timings_s"])
        assert max(moe["max_abs_diff_vs_ours"].values()) < 1e-5  # same weights, same function
        assert set(moe["ratios"]) >= {"ours_over_dense", "hf_eager_over_ours"}
    for train in cases["train_step"]["by_threads"].values():
        assert train["hf_max_abs_logit_diff"] < 1e-4
        assert set(train["mfu"]) == {"ours_adamw", "ours_muon", "hf_adamw"}
        pairs = train["hf_impl_s"]  # every HF attention/experts pair the MoE case ran, timed once
        assert {"sdpa/eager", "sdpa/grouped_mm", "eager/eager", "eager/grouped_mm"} <= set(pairs)
        assert pairs[f"{train['hf_attention']}/{train['hf_experts']}"] == min(pairs.values())
        assert 0 < train["optimizer_share"]["ours_muon"]["median"] < 1
        assert "ours_over_hf_tokens_per_s" in train
    assert cases["muon"]["parity_max_abs_diff_bf16"] == 0.0
    assert cases["tracking"]["metric_points_per_trial"] > 0
    dp = cases["data_parallel"]
    for run in ("one", "two_split", "two_repeated"):
        assert dp[run]["step_s"] > 0 and 0 < dp[run]["ns_share"] < 1, run
    md = (tmp_path / "bench.md").read_text()
    for g in on_disk["goals"]:
        assert g["name"] in md
        if g["met"] is False:  # a miss points at its analysis, which is not inlined
            assert f"see [docs/bench.md#{g['key']}](" in md
    for title in ("| CPU |", "| torch threads | 2; MoE layer and train step at each of 1 and 2",
                  "| goal | case | threads |", "## 1. MoE layer", "## 2. Train step",
                  "## 3. Muon", "## 4. Tracking", "## 7. Data-parallel", "## Profiles",
                  "### moe_layer at 1 thread:", "### train_step at 2 threads:",
                  "- at 1 thread: ours (AdamW) over HF"):
        assert title in md
    assert "| 1 | ours |" in md and "| 2 | ours |" in md  # MoE variants at each thread count
    assert "| 1 | ours_adamw |" in md and "| 2 | ours_adamw |" in md
    link = md.split("[docs/bench.md](", 1)[1].split(")", 1)[0]
    assert (tmp_path / link).resolve() == DOCS.resolve()  # the link works from out_dir


def test_docs_explain_every_goal() -> None:
    """docs/bench.md, which the report links to, has a section (anchor) for every goal key."""
    headings = {line.removeprefix("### ").strip("`") for line in DOCS.read_text().splitlines()
                if line.startswith("### `")}
    assert set(GOAL_KEYS) == GOALS and headings >= GOALS


def test_report_links_misses_and_renders_a_single_thread_run() -> None:
    """A missed goal's row links to docs/bench.md#<key>; a bench.json from before the cases ran
    per thread count (one run, no ``by_threads``) still renders, at the machine's threads."""
    goal = asdict(judge("moe_vs_hf", "moe_layer", "MoE vs HF", 1.2, ">=", 1.5, threads=1))
    machine = {k: "x" for k in ("cpu_model", "cores", "torch", "transformers", "ray", "mlflow",
                                "python", "platform", "device", "load_average_start")}
    r = {"meta": {"mode": "m", "started": "s", "wall_s": 1.0, "plan": {},
                  "machine": {**machine, "torch_threads": 2}},
         "goals": [goal], "errors": [],
         "cases": {"moe_layer": {"error": "boom"}, "muon": {"skipped": "no"}}}
    md = render(r, docs="../docs/bench.md")
    assert "| MoE vs HF | moe_layer | 1 | 1.2 | >= 1.5 | **missed**; why: see " \
           "[docs/bench.md#moe_vs_hf](../docs/bench.md#moe_vs_hf) |" in md
    assert "Not measured: boom at 2 threads" in md and "Not measured: no\n" in md
    assert "| torch threads | 2 |" in md and "## 2. Train step\n\nNot measured: not run" in md


def test_cuda_request_without_cuda_is_one_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        run_bench("cuda", out_dir=tmp_path)
    assert not (tmp_path / "bench.json").exists()


def test_summary_quartiles_and_paired_ratio() -> None:
    s = Summary.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    r = paired_ratio({"a": [2.0, 4.0, 30.0], "b": [1.0, 2.0, 10.0]}, "a", "b")
    assert (r.median, r.min, r.max) == (2.0, 2.0, 3.0)  # per round, not of medians
    with pytest.raises(ValueError):
        Summary.of([])


def test_interleaved_alternates_order_and_respects_budget() -> None:
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = interleaved(fns, warmup=1, repeats=3, sync=lambda: None)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in t.items()} == {"a": 3, "b": 3}
    calls.clear()
    t = interleaved(fns, warmup=0, repeats=50, sync=lambda: None, budget_s=0.0, min_repeats=2)
    assert len(t["a"]) == 2 and len(calls) == 4


def test_goal_judging() -> None:
    assert judge("k", "c", "n", 1.6, "<=", 1.6).met is True
    assert judge("k", "c", "n", 1.2, ">=", 1.5).met is False
    assert judge("k", "c", "n", None, ">=", 1.5).met is None
    with pytest.raises(ValueError):
        judge("k", "c", "n", 1.0, "==", 1.0)


def test_scheduling_efficiency_and_sweep() -> None:
    e = efficiency([10.0, 10.0, 10.0, 10.0], wall_s=25.0)
    assert e["parallel_efficiency"] == pytest.approx(0.8)
    assert e["overhead_per_trial_s"] == pytest.approx(2.5)  # (2 x 25 - 40) / 4
    trials = SweepConfig.model_validate(sweep_spec(steps=20)).expand()
    assert len(trials) == 4 and {t.optim.name for t in trials} == {"adamw", "muon"}
    assert all(t.train.steps == 20 for t in trials)


def test_prefix_case_scales_the_shipped_sweep_and_its_plan_meets_the_token_goal() -> None:
    shipped = shipped_ratio()
    assert shipped["trials"] == 60 and shipped["tokens_ratio"] <= 0.65
    assert shipped["tokens_trained"] == pytest.approx(shipped["tokens_budgets"] * 9.4 / 15,
                                                      rel=0.01)
    raw = read_yaml(SWEEP)
    small = SweepConfig.model_validate(scaled_sweep(raw, 0.25, "small", share=True))
    trials = small.expand()
    assert len(trials) == 12 and small.share_prefixes and not small.profiles  # seed 0 only
    assert sorted({t.train.tokens for t in trials}) == [250_000, 500_000, 1_000_000, 2_000_000]
    plan = plan_sharing(trials, None)
    assert not plan.reasons and [s.role for s in plan.shares.values()].count("trunk") == 3
    off = SweepConfig.model_validate(scaled_sweep(raw, 0.25, "off", share=False))
    assert not plan_sharing(off.expand(), None, off.share_prefixes).shares
