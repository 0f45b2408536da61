"""Case 7: a data-parallel train step on CPU (2 gloo workers) against one worker, at equal global
batch, and the share of the step spent in Muon's Newton-Schulz with and without splitting it.

The trial is the train-step case's reference model under Muon, with the global batch in 4
micro-batches (2 per worker at 2 workers). Three runs of ``steps`` timed steps (after
``warmup``), each process at 1 torch thread:

- ``one``: one process (the baseline);
- ``two_split``: 2 processes (torch.multiprocessing, gloo), each orthogonalising half of every
  Newton-Schulz batch and gathering the rest (:func:`harness.optim.newton_schulz_sharded`);
- ``two_repeated``: 2 processes, each orthogonalising every matrix itself (no split), as plain
  DDP + a local optimizer would.

Step time is rank 0's wall time per step; the Newton-Schulz share is Muon's ``ns_seconds``
(the gather included) over the step time. With 2 workers on 2 cores the ideal step ratio is 0.5;
what it costs beyond that is the gradient all-reduce, the split's gather and the per-micro-batch
fixed costs that do not halve.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.bench.train_step import TrainShape, _trial
from harness.config import TrialConfig
from harness.distributed import World
from harness.optim import muon_of

MICRO_BATCHES = 4


def dp_trial(shape: TrainShape, workers: int) -> TrialConfig:
    """The train-step case's Muon trial at ``workers`` workers (4 micro-batches a step)."""
    base = _trial(shape, "muon", torch.device("cpu")).model_dump()
    base["train"] |= {"micro_batch_tokens": shape.batch_tokens // MICRO_BATCHES,
                      "workers": workers, "threads": 1}
    return TrialConfig.model_validate(base)


def time_steps(trial: TrialConfig, world: World, warmup: int, steps: int,
               split: bool = True) -> dict[str, Any]:
    """Seconds per step (median) and Newton-Schulz seconds per step of ``steps`` timed steps."""
    from harness.data import load_data
    from harness.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(trial, load_data(trial.data), torch.device("cpu"), world)
    muon = muon_of(trainer.optimizer)
    assert muon is not None
    if not split:
        muon.shard = None
    for _ in range(warmup):
        trainer.train_step()
    muon.time_ns, muon.ns_seconds = True, 0.0
    times = []
    for _ in range(steps):
        world.barrier()
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    ns_s = muon.ns_seconds / steps
    return {"step_s": step_s, "ns_s": ns_s, "ns_share": ns_s / step_s}


def _rank(rank: int, out: str, trial: dict[str, Any], warmup: int, steps: int,
          split: bool) -> None:
    world = World.over_file(f"{out}/store", rank, 2)
    res = time_steps(TrialConfig.model_validate(trial), world, warmup, steps, split)
    Path(out, f"{rank}.json").write_text(json.dumps(res))
    world.leave()  # a failed rank ends its process; mp.spawn then stops the other


def _two_workers(trial: TrialConfig, warmup: int, steps: int, split: bool) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(out, trial.model_dump(mode="json"), warmup, steps, split),
                 nprocs=2, join=True)
        return json.loads(Path(out, "0.json").read_text())


def run_data_parallel(shape: TrainShape, *, warmup: int = 2, steps: int = 6) -> dict[str, Any]:
    """Case 7 (module docstring): the three runs and their ratios."""
    from harness.data import load_data

    load_data(dp_trial(shape, 1).data)  # the token cache, built before anything is timed
    one = time_steps(dp_trial(shape, 1), World(), warmup, steps)
    two = {name: _two_workers(dp_trial(shape, 2), warmup, steps, split)
           for name, split in (("two_split", True), ("two_repeated", False))}
    return {
        "one": one, **two, "steps": steps, "micro_batches": MICRO_BATCHES,
        "step_ratio": two["two_split"]["step_s"] / one["step_s"],
        "ns_split_over_repeated": two["two_split"]["ns_s"] / two["two_repeated"]["ns_s"],
    }
