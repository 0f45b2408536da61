"""Case 6: prefix sharing on ``sweeps/sparsity.yaml``: tokens trained and sweep wall, with
sharing over without, side by side on one local Ray.

Tokens: measured from the trials' work logs of the scaled sweep below (the goal's figure),
beside the ratio the shipped sweep's sharing plan gives (:mod:`harness.prefix`). Wall: the
shipped sweep takes about half an hour on 2 cores without sharing, so the case
runs its first seed with every budget (and the warmup, eval and checkpoint intervals) scaled
by ``scale``: the same arms and budgets grid, fewer steps each. It is submitted twice in one child
process on one local Ray (2 CPUs, 2 trials at a time), once with ``share_prefixes: false`` and
once with it on, each with its own storage and experiment; the ratio is shared / unshared
``submit`` wall. Per-trial costs that sharing does not remove (worker start, data loading,
model build, evaluation) weigh more at a smaller ``scale``, so the wall ratio measured here
is above the full-size one.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.bench.scheduling import CONCURRENCY, bench_child, start_local_ray

if TYPE_CHECKING:
    from harness.config import TrialConfig

log = logging.getLogger(__name__)

SWEEP = Path(__file__).resolve().parents[2] / "sweeps" / "sparsity.yaml"


def scaled_sweep(raw: dict[str, Any], scale: float, name: str, share: bool) -> dict[str, Any]:
    """The first seed of sweep ``raw`` with budgets, warmup, eval and checkpoint intervals
    times ``scale``."""
    out = copy.deepcopy(raw)
    out.pop("profiles", None)
    out.update(name=name, share_prefixes=share, max_failures=0, seeds=out["seeds"][:1])
    train = out["base"]["train"]
    for key in ("eval_every", "checkpoint_every"):
        train[key] = max(train["batch_tokens"], round(train[key] * scale))
    train["warmup_steps"] = max(1, round(train["warmup_steps"] * scale))
    out["grid"]["train.tokens"] = [round(t * scale) for t in out["grid"]["train.tokens"]]
    return out


def shipped_ratio() -> dict[str, Any]:
    """Tokens and FLOPs of the shipped sweep's budgets, and what its sharing plan trains."""
    from harness.config import load_sweep
    from harness.prefix import plan_sharing

    trials = load_sweep(SWEEP).expand()
    plan = plan_sharing(trials, None)
    budgets, trained = plan.tokens(trials)
    return {"trials": len(trials), "tokens_budgets": budgets, "tokens_trained": trained,
            "tokens_ratio": trained / budgets}


def _tokens_trained(storage: Path, trials: list[TrialConfig]) -> int:
    """Tokens the ``trials`` trained under ``storage``, from their work logs."""
    from harness.record import steps_trained

    return sum(steps_trained(storage / "checkpoints" / t.hash) * t.train.batch_tokens
               for t in trials)


def child(spec_path: Path, out_path: Path) -> None:
    """The child process: one local Ray, the scaled sweep without sharing, then with it."""
    import json

    from harness.config import SweepConfig
    from harness.config.files import read_yaml
    from harness.launch import submit

    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(spec_path.read_text())
    raw = read_yaml(SWEEP)
    ray_init_s = start_local_ray()
    from harness.data import load_data

    load_data(SweepConfig.model_validate(raw).expand()[0].data)  # cached before either is timed
    runs = {}
    for share in (False, True):
        label = "shared" if share else "unshared"
        sweep = SweepConfig.model_validate(scaled_sweep(raw, spec["scale"], f"bench-{label}",
                                                        share))
        storage = Path.cwd() / f"storage-{label}"
        t0 = time.perf_counter()
        summary = submit(sweep, storage=storage, max_concurrent=CONCURRENCY)
        wall = time.perf_counter() - t0
        if summary.finished != summary.total:
            raise RuntimeError(f"prefix bench: {label} sweep finished {summary.finished} of "
                               f"{summary.total} trials")
        runs[label] = {"wall_s": wall,
                       "tokens_trained": _tokens_trained(storage, sweep.expand()),
                       "flops_budgets": summary.flops_budgets,
                       "flops_trained": summary.flops_trained}
    out_path.write_text(json.dumps({"ray_init_s": ray_init_s, "runs": runs}))


def run_prefix_sharing(*, scale: float, timeout_s: float = 1800) -> dict[str, Any]:
    """The case: the shipped sweep's planned token ratio, and the scaled sweep's measured
    token and wall ratios."""
    shipped = shipped_ratio()
    log.info("prefix sharing: sparsity.yaml at scale %g on local Ray, with and without", scale)
    out, child_wall = bench_child("harness.bench.prefix_sharing", {"scale": scale}, timeout_s,
                                  "prefix sharing")
    shared, unshared = out["runs"]["shared"], out["runs"]["unshared"]
    return {
        "scale": scale,
        "shipped": shipped,
        **out,
        "child_process_wall_s": child_wall,
        "shipped_tokens_ratio": shipped["tokens_ratio"],
        "tokens_ratio": shared["tokens_trained"] / unshared["tokens_trained"],
        "wall_ratio": shared["wall_s"] / unshared["wall_s"],
    }


if __name__ == "__main__":
    child(Path(sys.argv[1]), Path(sys.argv[2]))
