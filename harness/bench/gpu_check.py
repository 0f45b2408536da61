"""``make gpu-check``: the CUDA path on one GPU box, against the chip's own measured limits.

One prepared run (about 8 minutes on one H200) that any user with a CUDA machine can start,
with neither Ray nor MLflow installed:

1. the ``gpu``-marked tests (``tests/test_gpu.py``), in a child pytest;
2. ``harness bench --device cuda --quick`` (its Ray and MLflow cases say "not installed");
3. a short trial of each GPU profile's smallest size (and a d_model 1024 one: the optimizers
   GPU profile's largest trial widened by :data:`D1024`) with its real settings (bf16
   autocast, grouped_mm experts), compile off and on: tokens/s, MFU over the bf16 GEMM rate
   measured in this same run (``gemm_flops_per_s``), peak memory against
   :func:`harness.memory.estimate_bytes`, and the first steps' losses against the CPU float32
   path at a reduced batch;
4. four packed trials (``resources.gpu: 0.25``, smoke.yaml's GPU profile) against one alone:
   aggregate tokens/s of four concurrent ``harness train --jsonl`` processes over one.

It writes ``<out>/bench.json`` and ``<out>/bench.md``; ``--tiny`` runs every step at toy sizes
on any device, for the CPU test of this script.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from harness.bench.run import run_bench, run_case
from harness.bench.timing import gemm_flops_per_s, machine
from harness.config import TrialConfig, load_sweep
from harness.config.sweep import set_dotted
from harness.data import load_data
from harness.memory import estimate_bytes
from harness.tracking import read_jsonl
from harness.trainer import Trainer

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "sweeps"
TINY_MODEL: dict[str, Any] = {
    "d_model": 32, "n_layers": 2, "first_k_dense": 1, "dense_ffn_dim": 64,
    "attention": {"kind": "mla", "n_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                  "qk_rope_head_dim": 4, "v_head_dim": 8},
    "moe": {"n_routed_experts": 4, "top_k": 2, "expert_ffn_dim": 16},
}
D1024 = {  # the MFU goal's size (as :func:`_variant` keys): 16 layers and heads, expert FFN
    # d_model / 4 and a dense FFN of (8 + 1) x 256, 64 experts 8 + 1 active; micro-batches of 8
    # sequences (estimate 64 GiB, where the profile's 32 would need 219 GiB)
    "model__d_model": 1024, "model__n_layers": 16, "model__attention__n_heads": 16,
    "model__moe__expert_ffn_dim": 256, "model__dense_ffn_dim": 2304,
    "train__micro_batch_tokens": 16384,
}
GOALS = {  # the H200 goals of issue "the GPU path": name -> (rule, threshold)
    "moe_vs_dense": (">=", 0.5),   # MoE layer rate over the dense GEMM rate of equal FLOPs
    "mfu_d1024": (">=", 0.35),     # the d_model 1024 trial's MFU over the measured GEMM rate
    "packing": (">=", 2.5),        # 4 packed trials' aggregate tokens/s over one trial
    "memory_estimate": ("<=", 0.25),  # |estimate - measured peak| / measured peak, worst trial
}


def _variant(trial: TrialConfig, **dotted: Any) -> TrialConfig:
    """``trial`` with the dotted keys replaced (``train__tokens=...`` sets train.tokens)."""
    raw = trial.model_dump()
    for key, value in dotted.items():
        set_dotted(raw, key.replace("__", "."), value)
    return TrialConfig.model_validate(raw)


def profile_trials(tiny: bool) -> dict[str, TrialConfig]:
    """The smallest trial of every shipped GPU profile, and the largest optimizers one widened to
    d_model 1024 (:data:`D1024`), where the MFU goal is set."""
    out: dict[str, TrialConfig] = {}
    for path in sorted(SWEEPS.glob("*.yaml")):
        if "gpu" not in (yaml.safe_load(path.read_text()).get("profiles") or {}):
            continue
        trials = load_sweep(path, "gpu").expand()
        size = lambda t: (t.model.d_model, t.model.moe.n_routed_experts, t.train.tokens)  # noqa: E731
        out[path.stem] = min(trials, key=size)
        if path.stem == "optimizers":
            out["optimizers-d1024"] = _variant(max(trials, key=size), **D1024)
    if tiny:  # toy sizes on any device: the script's own test
        out = {k: _variant(t, model={**TINY_MODEL, "vocab_size": t.model.vocab_size},
                           train__batch_tokens=256, train__micro_batch_tokens=None,
                           train__seq_len=64, train__device="auto",
                           data__val_tokens=1024, data__test_tokens=1024)
               for k, t in list(out.items())[:2]}
    return out


def _steps(trainer: Trainer, n: int) -> tuple[list[float], float]:
    """Losses of ``n`` optimizer steps and their wall seconds (device synchronised)."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    losses = [trainer.train_step()[0] for _ in range(n)]
    sync()
    return losses, time.perf_counter() - t0


def run_profile_trial(trial: TrialConfig, device: torch.device, peak: float, steps: int,
                      compile_: bool) -> dict[str, Any]:
    """Tokens/s, MFU and peak memory of ``steps`` timed steps after 3 untimed ones (compile,
    autotune and allocator warm-up happen there)."""
    trial = _variant(trial, train__compile=compile_, train__device=device.type)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(trial, load_data(trial.data), device)
    _steps(trainer, 3)
    losses, seconds = _steps(trainer, steps)
    tps = steps * trial.train.batch_tokens / seconds
    flops = trial.model.flops_per_token(trial.train.seq_len) * tps
    out = {"compile": compile_, "tokens_per_s": tps, "mfu": flops / peak, "losses": losses,
           "estimate_bytes": estimate_bytes(trial)}
    if device.type == "cuda":
        measured = torch.cuda.max_memory_allocated(device)
        out["peak_bytes"] = measured
        out["estimate_error"] = (out["estimate_bytes"] - measured) / measured
    return out


def loss_parity(trial: TrialConfig, device: torch.device, steps: int = 3) -> dict[str, Any]:
    """The first ``steps`` losses on ``device`` (bf16 autocast on CUDA) against the CPU float32
    path, at a batch of 4 sequences (the CPU cannot run a GPU batch in seconds)."""
    small = _variant(trial, train__batch_tokens=4 * trial.train.seq_len,
                     train__micro_batch_tokens=None)
    data = load_data(small.data)
    here, _ = _steps(Trainer(_variant(small, train__device=device.type), data, device), steps)
    cpu, _ = _steps(Trainer(_variant(small, train__device="cpu"), data, torch.device("cpu")),
                    steps)
    worst = max(abs(a - b) / b for a, b in zip(here, cpu, strict=True))
    return {"device_losses": here, "cpu_fp32_losses": cpu, "max_rel_diff": worst,
            "ok": worst < 2e-2}


def packing(trial: TrialConfig, steps: int, work: Path) -> dict[str, Any]:
    """Aggregate tokens/s of 4 concurrent ``harness train --jsonl`` processes over 1 alone."""
    trial = _variant(trial, train__tokens=steps * trial.train.batch_tokens,
                     train__log_every=max(1, steps // 10), train__eval_every=10**12,
                     train__checkpoint_every=10**12)

    def launch(n: int, tag: str) -> list[float]:
        procs = []
        for i in range(n):
            spec = _variant(trial, train__seed=100 + i)  # different hashes, no shared folder
            path = work / f"{tag}-{i}.yaml"
            path.write_text(yaml.safe_dump(json.loads(spec.model_dump_json())))
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "harness", "train", str(path), "--jsonl",
                 str(work / f"{tag}-{i}.jsonl"), "--checkpoint-dir", str(work / f"{tag}-{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), path))
        rates = []
        for proc, path in procs:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"packed trial {path.name} failed: {err[-500:]}")
            curve = read_jsonl(path.with_suffix(".jsonl")).history("perf/tokens_per_s")
            rates.append(statistics.median(v for _, v in curve[1:] or curve))
        return rates

    alone = launch(1, "alone")[0]
    packed = launch(4, "packed")
    return {"alone_tokens_per_s": alone, "packed_tokens_per_s": packed,
            "ratio": sum(packed) / alone}


def gpu_tests() -> dict[str, Any]:
    """``pytest -m gpu tests/test_gpu.py`` in a child process: its exit status and summary."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                          "gpu", str(ROOT / "tests" / "test_gpu.py")], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    return {"returncode": out.returncode, "summary": lines[-1] if lines else out.stderr[-300:],
            "failures": [ln for ln in lines if ln.startswith("FAILED")]}


def _moe_rate(bench: dict[str, Any]) -> float | None:
    """The MoE layer's FLOP rate over the dense GEMM's at equal active FLOPs (bench case 1)."""
    from harness.bench.report import runs_of

    ratios = [c["ratios"]["ours_over_dense"]["median"] for _, c in runs_of(
        bench.get("cases", {}).get("moe_layer")) if "ratios" in c]
    return 1.0 / ratios[-1] if ratios else None


def _goal(key: str, value: float | None) -> dict[str, Any]:
    rule, threshold = GOALS[key]
    met = None if value is None else (value >= threshold if rule == ">=" else value <= threshold)
    return {"key": key, "value": value, "rule": rule, "threshold": threshold, "met": met}


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The four H200 goals on this run's figures (value None where a step did not run)."""
    trials = result["trials"]
    d1024 = trials.get("optimizers-d1024", {}).get("compile_off", {})
    errors = [abs(r["estimate_error"]) for t in trials.values() for r in t.values()
              if isinstance(r, dict) and "estimate_error" in r]
    return [_goal("moe_vs_dense", _moe_rate(result["bench"])),
            _goal("mfu_d1024", d1024.get("mfu")),
            _goal("packing", result["packing"].get("ratio")),
            _goal("memory_estimate", max(errors) if errors else None)]


def run_gpu_check(out_dir: Path, *, tiny: bool = False, steps: int = 8) -> dict[str, Any]:
    """Every step of the module docstring; writes ``out_dir/bench.{json,md}``. A failing step
    is recorded in ``errors`` and the others still run."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not tiny and device.type != "cuda":
        raise RuntimeError("make gpu-check: no CUDA device is visible (--tiny runs on CPU)")
    out_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    t0 = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(device), "device": device.type, "tiny": tiny}
    result["tests"] = ({"skipped": "tiny run"} if tiny else run_case("tests", gpu_tests, errors))
    result["bench"] = run_case("bench", lambda: run_bench(
        device.type, quick=True, out_dir=out_dir / "harness-bench", tiny=tiny,
        scheduling=False), errors)
    peak = gemm_flops_per_s(256 if tiny else 8192, device,
                            torch.bfloat16 if device.type == "cuda" else torch.float32)
    result["gemm_peak_flops"] = peak
    result["trials"] = {}
    trials = profile_trials(tiny)
    for name, trial in trials.items():
        runs = {f"compile_{'on' if c else 'off'}": run_case(
            f"{name} compile {c}", lambda t=trial, c=c: run_profile_trial(
                t, device, peak, 2 if tiny else steps, c), errors)
            for c in ((False,) if tiny else (False, True))}
        runs["parity"] = run_case(f"{name} parity", lambda t=trial: loss_parity(t, device), errors)
        result["trials"][name] = runs
    smoke = next(iter(trials.values())) if tiny else load_sweep(SWEEPS / "smoke.yaml",
                                                                "gpu").expand()[0]
    with tempfile.TemporaryDirectory() as work:
        result["packing"] = run_case("packing", lambda: packing(
            smoke, 8 if tiny else 300, Path(work)), errors)
    result["goals"] = goals(result)
    result["errors"] = errors
    result["wall_s"] = time.perf_counter() - t0
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out_dir / "bench.md").write_text(render(result))
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render(result: dict[str, Any]) -> str:
    """``bench.md``: goals, then one row per profile trial, parity, packing and the tests."""
    m = result["machine"]
    lines = [f"# GPU check on {m.get('gpu') or m.get('cpu_model')}", "",
             f"{'Toy sizes (the script test), ' if result['tiny'] else ''}device "
             f"{result['device']}, bf16 GEMM rate measured here "
             f"{result['gemm_peak_flops'] / 1e12:.1f} TFLOP/s, wall {result['wall_s']:.0f} s.",
             "", "| goal | value | rule | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['key']} | {value} | {g['rule']} {g['threshold']} | {met} |")
    lines += ["", "| trial | compile | tokens/s | MFU | peak GiB | estimate GiB | estimate error |",
              "|---|---|---|---|---|---|---|"]
    for name, runs in result["trials"].items():
        for key, r in runs.items():
            if key == "parity":
                continue
            if "error" in r:
                lines.append(f"| {name} | {key} | error: {r['error'][:80]} | | | | |")
                continue
            peak = r.get("peak_bytes")
            lines.append(
                f"| {name} | {r['compile']} | {r['tokens_per_s']:.0f} | {_pct(r['mfu'])} | "
                f"{'-' if peak is None else f'{peak / 2**30:.2f}'} | "
                f"{r['estimate_bytes'] / 2**30:.2f} | {_pct(r.get('estimate_error'))} |")
    lines += ["", "| trial | first losses (device) | CPU fp32 | max rel. diff |",
              "|---|---|---|---|"]
    for name, runs in result["trials"].items():
        p = runs["parity"]
        if "error" not in p:
            fmt = lambda xs: " ".join(f"{x:.4f}" for x in xs)  # noqa: E731
            lines.append(f"| {name} | {fmt(p['device_losses'])} | {fmt(p['cpu_fp32_losses'])} | "
                         f"{_pct(p['max_rel_diff'])} |")
    pk = result["packing"]
    if "error" not in pk:
        lines += ["", f"Packing: one trial alone {pk['alone_tokens_per_s']:.0f} tokens/s; four at "
                  f"once {sum(pk['packed_tokens_per_s']):.0f} in all ({pk['ratio']:.2f}x)."]
    tests = result["tests"]
    lines += ["", f"GPU tests: {tests.get('summary') or tests.get('skipped') or tests}"]
    lines += [f"- error: {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.bench.gpu_check [--out results/gpu] [--tiny]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on any device")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trial")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = run_gpu_check(args.out, tiny=args.tiny, steps=args.steps)
    print((args.out / "bench.md").read_text())
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
