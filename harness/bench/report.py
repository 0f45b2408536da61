"""Goals and the Markdown report of a bench run (``results/bench.md``).

The report holds the figures of one run; what the cases measure, why the goals are where they
are and the analysis of each goal's misses are in ``docs/bench.md``, one section per goal key
(anchor ``#<key>``), which a missed goal's row links to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GOAL_KEYS = ("moe_vs_hf", "moe_overhead", "mfu", "train_vs_hf", "muon_vs_torch",
             "tracking_overhead", "sched_efficiency", "prefix_tokens", "prefix_wall", "dp_step",
             "dp_ns_split")
"""Every goal of the issue, in report order; ``docs/bench.md`` has a section ``#<key>`` each."""

DOCS_HREF = "../docs/bench.md"
"""``docs/bench.md`` as a link from ``results/bench.md``."""


@dataclass(frozen=True)
class Goal:
    """One goal of the issue: ``value op target``; ``met`` None when it was not measured.

    ``threads``: the torch threads the value was measured at (None: not one count, e.g. Ray).
    """

    key: str
    case: str
    name: str
    value: float | None
    op: str  # ">=" or "<="
    target: float
    met: bool | None
    threads: int | None = None


def judge(
    key: str,
    case: str,
    name: str,
    value: float | None,
    op: str,
    target: float,
    threads: int | None = None,
) -> Goal:
    """A :class:`Goal` with ``met`` decided (None when ``value`` is None)."""
    if op not in (">=", "<="):
        raise ValueError(f"op must be '>=' or '<=', got {op!r}")
    met = None if value is None else (value >= target if op == ">=" else value <= target)
    return Goal(key, case, name, value, op, target, met, threads)


def runs_of(case: dict[str, Any] | None) -> list[tuple[int | None, dict[str, Any]]]:
    """``(threads, result)`` of each run of a case run per thread count (``by_threads``), in
    order; ``[(None, case)]`` for a case run once (and for bench.json files older than that)."""
    case = case or {}
    if "by_threads" in case:
        return [(r["threads"], r) for r in case["by_threads"].values()]
    return [(None, case)]


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, int | float) else "–"


def _sum(s: dict[str, Any] | None, unit: str = "", scale: float = 1.0) -> str:
    """``median (IQR q1-q3, range min-max, n)`` of a Summary dict."""
    if not s:
        return "–"
    m, q1, q3, lo, hi = (scale * s[k] for k in ("median", "q1", "q3", "min", "max"))
    return f"{m:.3g}{unit} (IQR {q1:.3g}-{q3:.3g}, range {lo:.3g}-{hi:.3g}, n {s['n']})"


def _status(g: dict[str, Any], docs: str) -> str:
    """Met, missed (with a link to the goal's analysis in docs/bench.md) or not measured."""
    if g["met"] is False:
        return f"**missed**; why: see [docs/bench.md#{g['key']}]({docs}#{g['key']})"
    return "**met**" if g["met"] else "not measured"


def _threads(n: int | None) -> str:
    return "–" if n is None else f"{n}"


def _at(n: int | None) -> str:
    """`` at 1 thread`` / `` at 2 threads``; empty for a run without a thread count."""
    return "" if n is None else f" at {n} thread{'s' if n != 1 else ''}"


TITLES = {"moe_layer": "1. MoE layer, forward + backward", "train_step": "2. Train step",
          "muon": "3. Muon step on the expert stacks", "tracking": "4. Tracking overhead",
          "scheduling": "5. Scheduling on local Ray",
          "prefix": "6. Prefix sharing on sweeps/sparsity.yaml",
          "data_parallel": "7. Data-parallel train step (2 gloo workers, CPU)"}


Run = tuple[int | None, dict[str, Any]]
"""``(threads, result)`` of one run of a case (see :func:`runs_of`)."""


def _threads_row(r: dict[str, Any]) -> str:
    """The machine table's torch-threads row: the bench's count and the per-run counts."""
    n, counts = r["meta"]["machine"]["torch_threads"], r["meta"]["plan"].get("threads")
    if not counts or list(counts) == [n]:
        return f"| torch threads | {n} |"
    each = " and ".join(str(c) for c in counts)
    return (f"| torch threads | {n}; MoE layer and train step at each of {each} (a sweep trial "
            "with `resources.cpu: c` runs max(1, c), the shipped sweeps 1) |")


def _goal_threads(g: dict[str, Any], r: dict[str, Any]) -> int | None:
    """A goal's thread count; for a bench.json from before goals had one, the count its case
    ran at (the tracking case's own, none for Ray, else the bench's)."""
    if "threads" in g:
        return g["threads"]
    if g["case"] in ("scheduling", "prefix"):
        return None
    if g["case"] == "tracking":
        return (r["cases"].get("tracking") or {}).get("threads")
    return r["meta"]["machine"]["torch_threads"]


def _header(r: dict[str, Any], docs: str) -> list[str]:
    meta, m = r["meta"], r["meta"]["machine"]
    sha = f", commit {m['git_sha'][:12]}" if m.get("git_sha") not in (None, "unknown") else ""
    return [
        f"# Benchmark ({meta['mode']}, {m['device']})",
        "",
        f"Generated by `harness bench` on {meta['started']} in {meta['wall_s']:.0f} s; every "
        "figure is in `bench.json`. Each case runs its variants in one process after warm-up, "
        "round by round in alternating order (A B, B A, ...); a ratio is taken within each round "
        "and then summarised, so drift of the shared machine cancels. Summaries: median "
        "(interquartile range, min-max range, number of rounds). *CPU s* is the process CPU "
        "time of a call (all threads, spin-waits included): far below wall x threads means the "
        "call waited for a core (other load), which small-op paths suffer most. What each case "
        f"measures, the goals and the analysis of each miss: [docs/bench.md]({docs}).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']}, {m['cores']} cores |",
        _threads_row(r),
        f"| GPU | {m.get('gpu', 'none')} |",
        f"| versions | torch {m['torch']}, transformers {m['transformers']}, ray {m['ray']}, "
        f"mlflow {m['mlflow']}, Python {m['python']}{sha} |",
        f"| platform | {m['platform']} |",
        f"| load average (1/5/15 min) | start {m['load_average_start']}, end "
        f"{m.get('load_average_end')} |",
        "",
        "## Goals",
        "",
        "| goal | case | threads | value | target | status |",
        "|---|---|---|---|---|---|",
        *(f"| {g['name']} | {g['case']} | {_threads(_goal_threads(g, r))} | {_f(g['value'])} | "
          f"{g['op']} {g['target']:g} | {_status(g, docs)} |" for g in r["goals"]),
        "",
        *([f"Errors: {'; '.join(r['errors'])}", ""] if r["errors"] else []),
    ]


def _moe_rows(n: int | None, c: dict[str, Any]) -> list[str]:
    return [
        f"| {_threads(n)} | {v} | {_sum(s, ' s')} | {_f(c['cpu_s'][v]['median'])} | "
        f"{c['gflop_per_s'][v]:.3g} | "
        f"{_f(c['max_abs_diff_vs_ours'].get(v)) if v not in ('ours', 'dense') else '–'} |"
        for v, s in c["timings_s"].items()
    ]


def _moe(runs: list[Run]) -> list[str]:
    c = runs[0][1]
    sh = c["shape"]
    return [
        f"## {TITLES['moe_layer']}",
        "",
        f"N {sh['tokens']} tokens, D {sh['d_model']}, F {sh['expert_ffn']}, "
        f"E {sh['n_experts']}, top-{sh['top_k']}, {sh['n_shared']} shared; dense SwiGLU hidden "
        f"{sh['dense_hidden']} (same active FLOPs, {c['train_flops'] / 1e9:.3g} GFLOP per "
        "forward + backward). Same weights and input for all; gradients reset between calls. "
        "One run per thread count, its variants alternating round by round.",
        "",
        "| threads | variant | wall seconds | CPU s (median) | GFLOP/s | "
        "max abs diff of output vs ours |",
        "|---|---|---|---|---|---|",
        *(row for n, run in runs for row in _moe_rows(n, run)),
        *(f"| all | {v} | skipped: {why} | | | |" for v, why in c["skipped_variants"].items()),
        "",
        "| threads | ratio (per round) | value |",
        "|---|---|---|",
        *(f"| {_threads(n)} | {k} | {_sum(v, 'x')} |" for n, run in runs
          for k, v in run["ratios"].items()),
        "",
        "Fastest transformers path: "
        + ", ".join(f"`{run['best_hf']}`{_at(n)}" for n, run in runs) + ".",
        "",
    ]


def _train_rows(n: int | None, c: dict[str, Any]) -> list[str]:
    share = c.get("optimizer_share", {})
    return [
        f"| {_threads(n)} | {a} | {_sum(c['timings_s'][a], ' s')} | "
        f"{_f(c['cpu_s'][a]['median'])} | {c['tokens_per_s'][a]:.4g} | "
        f"{c['model_flop_per_s'][a] / 1e9:.3g} | {_sum(c['mfu'][a], '%', 100)} | "
        f"{_sum(share.get(a), '%', 100)} |"
        for a in c["timings_s"]
    ]


def _train_hf(n: int | None, c: dict[str, Any]) -> list[str]:
    """The HF comparison and datasheet MFU of one run, where measured."""
    out = []
    if "ours_over_hf_tokens_per_s" in c:
        impl_s = c.get("hf_impl_s") or c.get("hf_attention_s", {})
        out += [
            f"-{_at(n)}: ours (AdamW) over HF (AdamW) tokens/s "
            f"{_sum(c['ours_over_hf_tokens_per_s'], 'x')}. HF ran with experts "
            f"`{c['hf_experts']}` and attention `{c['hf_attention']}` (the fastest of one timed "
            "step per attention/experts pair: "
            + ", ".join(f"{k} {v:.3g} s" for k, v in impl_s.items())
            + f"); max |logit difference| on our weights {_f(c['hf_max_abs_logit_diff'])}.",
        ]
    if "mfu_datasheet" in c:
        out += [
            f"-{_at(n)}: MFU over the datasheet bf16 peak "
            f"({c['datasheet_peak_flop_per_s'] / 1e12:.4g} TFLOP/s): "
            + ", ".join(f"{a} {100 * v:.3g}%" for a, v in c["mfu_datasheet"].items()) + ".",
        ]
    return out


def _train(runs: list[Run]) -> list[str]:
    c = runs[0][1]
    m = c["model"]
    gemm = "; ".join(f"{_sum(run['gemm_flop_per_s'], ' GFLOP/s', 1e-9)}{_at(n)}"
                     for n, run in runs)
    hf = [line for n, run in runs for line in _train_hf(n, run)]
    return [
        f"## {TITLES['train_step']}",
        "",
        f"Model: MLA, {m['n_layers']} layers ({m['first_k_dense']} dense), d {m['d_model']}, "
        f"{m['moe']['n_routed_experts']} experts top-{m['moe']['top_k']} + "
        f"{m['moe']['n_shared']} shared, F {m['moe']['expert_ffn_dim']}, vocab "
        f"{m['vocab_size']}; {c['active_params'] / 1e6:.3g}M active parameters. Batch "
        f"{c['batch_tokens']} tokens of sequence {c['seq_len']}; "
        f"{c['flops_per_token'] / 1e6:.3g} MFLOP per token (`flops_per_token`). MFU = model "
        f"FLOP/s over the same round's GEMM rate at the same thread count ({gemm}).",
        "",
        "| threads | arm | step (wall) | CPU s | tokens/s | model GFLOP/s | MFU | "
        "optimizer share |",
        "|---|---|---|---|---|---|---|---|",
        *(row for n, run in runs for row in _train_rows(n, run)),
        "",
        *([*hf, ""] if hf else []),
        f"Muon's Newton-Schulz FLOP bound T*m/B (dense form, m = d_model): "
        f"{100 * c['ns_bound_T_m_over_B']:.3g}% of the step; exact NS FLOPs of this model's "
        f"hidden matrices over its model FLOPs: {100 * c['ns_flops_over_model_flops']:.3g}% "
        "(routed experts are orthogonalised for all E experts but train only K/E of the tokens, "
        "so their bound is T*n*E/(K*B)).",
        "",
    ]


def _muon(c: dict[str, Any]) -> list[str]:
    return [
        f"## {TITLES['muon']}",
        "",
        f"{c['matrices']} matrices of shapes {c['matrix_shapes']}: ours as stacks (one batched "
        "NS per shape bucket) vs `torch.optim.Muon` over the same matrices as separate 2-D "
        "parameters. torch runs NS in bf16; `ours_bf16` does too (like for like), `ours` uses "
        f"its default dtype. Parity after one step: max |ours_bf16 - torch| "
        f"{_f(c['parity_max_abs_diff_bf16'])} (largest step {_f(c['parity_max_step'])}).",
        "",
        "| variant | wall seconds | CPU s | ms per matrix |",
        "|---|---|---|---|",
        *(f"| {n} | {_sum(s, ' s')} | {_f(c['cpu_s'][n]['median'])} | "
          f"{c['ms_per_matrix'][n]:.3g} |" for n, s in c["timings_s"].items()),
        "",
        *(f"- {k}: {_sum(v, 'x')}" for k, v in c["ratios"].items()),
        "",
    ]


def _tracking(c: dict[str, Any]) -> list[str]:
    return [
        f"## {TITLES['tracking']}",
        "",
        f"One trial of {c['steps']} steps x {c['batch_tokens']} tokens (model d "
        f"{c['model']['d_model']}, {c['model']['n_layers']} layers, synthetic data, "
        f"{c.get('threads', '?')} torch thread(s) as a Ray trial given 1 CPU), metrics "
        f"every {c['log_every_steps']} steps ({c['metric_points_per_trial']} points), MLflow "
        f"flushing every {c['flush_every_s']} s to SQLite in a temporary folder, against the "
        "in-memory tracker. Wall: the whole `run_trial` call (+ attaching the MLflow run).",
        "",
        *(f"- {n}: {_sum(s, ' s')}" for n, s in c["timings_s"].items()),
        f"- overhead (per round, t_mlflow / t_memory - 1): {_sum(c['overhead'], '%', 100)}",
        "",
    ]


def _scheduling(c: dict[str, Any]) -> list[str]:
    lines = [
        f"## {TITLES['scheduling']}",
        "",
        f"4 smoke-like trials of {c['steps_per_trial']} steps, 1 CPU each, concurrency 2 on "
        f"{c['ray_cpus']:g} Ray CPUs. *Train time* = `wall_s` of each trial's result.json (its "
        "optimizer steps only); *wall* = the `submit()` call with Ray already started "
        f"(`ray.init` took {c['ray_init_s']:.3g} s apart): {c['submit_wall_s']:.3g} s. Sum of "
        f"train times {c['sum_train_s']:.3g} s.",
        "",
        f"- parallel efficiency = sum train / (2 x wall): {c['parallel_efficiency']:.3g}",
        f"- non-training slot time per trial: {c['overhead_per_trial_s']:.3g} s",
    ]
    if "ray_overhead_per_trial_s" in c:
        lines += [
            f"  - inside the trainable (imports, data, model build, final eval, checkpoint): "
            f"{c['in_trial_overhead_per_trial_s']:.3g} s",
            f"  - outside it (Ray actor start, scheduling, driver-side reporting and MLflow): "
            f"{c['ray_overhead_per_trial_s']:.3g} s",
        ]
    lines += [
        f"- train time per trial needed for 0.8 at this overhead: "
        f"{c['train_s_per_trial_for_0.8']:.3g} s",
        "",
    ]
    return lines


def _prefix(c: dict[str, Any]) -> list[str]:
    shipped, runs = c["shipped"], c["runs"]
    un, sh = runs["unshared"], runs["shared"]
    return [
        f"## {TITLES['prefix']}",
        "",
        f"Tokens: the shipped sweep ({shipped['trials']} trials) has budgets of "
        f"{shipped['tokens_budgets'] / 1e6:.4g}M tokens; its sharing plan trains "
        f"{shipped['tokens_trained'] / 1e6:.4g}M ({shipped['tokens_ratio']:.3g}x). Wall: the "
        f"same sweep with every budget, the warmup and the eval and checkpoint intervals x "
        f"{c['scale']:g}, submitted without sharing and then with it on one local Ray (2 CPUs, "
        f"2 trials at a time; `ray.init` took {c['ray_init_s']:.3g} s apart).",
        "",
        "| | sweep wall | tokens trained (work logs) | FLOPs of the budgets | FLOPs trained |",
        "|---|---|---|---|---|",
        *(f"| {label} | {r['wall_s']:.4g} s | {r['tokens_trained'] / 1e6:.4g}M | "
          f"{r['flops_budgets']:.3g} | {r['flops_trained']:.3g} |"
          for label, r in (("without sharing", un), ("with sharing", sh))),
        "",
        f"- tokens trained, shared / unshared (work logs at this scale): "
        f"{c['tokens_ratio']:.3g}",
        f"- sweep wall, shared / unshared: {c['wall_ratio']:.3g}",
        "",
    ]


def _data_parallel(c: dict[str, Any]) -> list[str]:
    runs = (("1 worker", c["one"]), ("2 workers, Newton-Schulz split", c["two_split"]),
            ("2 workers, Newton-Schulz on every rank", c["two_repeated"]))
    return [
        f"## {TITLES['data_parallel']}",
        "",
        f"The train-step model under Muon, {c['micro_batches']} micro-batches per global step "
        f"(2 per worker at 2 workers), 1 torch thread per process, median of {c['steps']} "
        "steps; rank 0's wall time. Newton-Schulz time includes the split's all-gather.",
        "",
        "| run | step | Newton-Schulz per step | share of the step |",
        "|---|---|---|---|",
        *(f"| {label} | {r['step_s'] * 1e3:.4g} ms | {r['ns_s'] * 1e3:.4g} ms | "
          f"{100 * r['ns_share']:.3g}% |" for label, r in runs),
        "",
        f"- step, 2 workers / 1 worker (ideal 0.5): {c['step_ratio']:.3g}",
        f"- Newton-Schulz, split / repeated on each rank: {c['ns_split_over_repeated']:.3g}",
        "",
    ]


def _profiles(r: dict[str, Any]) -> list[str]:
    out = []
    for case in ("moe_layer", "train_step"):
        for n, run in runs_of(r["cases"].get(case)):
            for name, p in run.get("profile", {}).items():
                out += [
                    f"### {case}{_at(n)}: {name} ({p['total_ms']:.4g} ms profiled)",
                    "",
                    "| operator | self ms | share | calls |",
                    "|---|---|---|---|",
                    *(f"| `{o['name']}` | {o['self_ms']:.4g} | {100 * o['share']:.3g}% | "
                      f"{o['calls']} |" for o in p["ops"]),
                    "",
                ]
    return ["## Profiles (one call each, torch.profiler)", "", *out] if out else []


def _once(fn: Callable[[dict[str, Any]], list[str]]) -> Callable[[list[Run]], list[str]]:
    """A section of a case run once, as a section of runs."""
    return lambda runs: fn(runs[0][1])


SECTIONS: dict[str, Callable[[list[Run]], list[str]]] = {
    "moe_layer": _moe, "train_step": _train, "muon": _once(_muon),
    "tracking": _once(_tracking), "scheduling": _once(_scheduling), "prefix": _once(_prefix),
    "data_parallel": _once(_data_parallel),
}


def _section(case: str, runs: list[Run]) -> list[str]:
    """One case's section: its measured runs, then those that failed, then what each took."""
    done = [(n, c) for n, c in runs if c and "error" not in c and "skipped" not in c]
    failed = [(n, c.get("error") or c.get("skipped") or "not run")
              for n, c in runs if (n, c) not in done]
    if not done:
        why = "; ".join(f"{why}{_at(n)}" for n, why in failed)
        return [f"## {TITLES[case]}", "", f"Not measured: {why}", ""]
    took = ", ".join(f"{c['case_seconds']:.0f} s{_at(n)}" for n, c in done)
    after = ", ".join(f"{c['load_average_after']}{_at(n)}" for n, c in done)
    return [
        *SECTIONS[case](done),
        *(f"Not measured{_at(n)}: {why}" for n, why in failed),
        f"Case took {took}; load average after: {after}.",
        "",
    ]


def render(r: dict[str, Any], docs: str = DOCS_HREF) -> str:
    """The whole Markdown report of a bench result dict; ``docs`` links ``docs/bench.md``.

    A run recorded before cases ran per thread count renders with the machine's thread count.
    """
    default = r["meta"]["machine"]["torch_threads"]
    lines = _header(r, docs)
    for case in SECTIONS:
        runs = [(default if n is None and case in ("moe_layer", "train_step") else n, c)
                for n, c in runs_of(r["cases"].get(case))]
        lines += _section(case, runs)
    lines += _profiles(r)
    return "\n".join(lines).rstrip() + "\n"
