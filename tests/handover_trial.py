"""A multi-worker trial's shape (a Ray Train run inside a Tune function trainable, reports
through ``TuneReportCallback``) under a Tune that is slow to take each result: run by
tests/test_data_parallel_sweep.py as a child process, so that a wedged trial fails that test's
timeout instead of hanging the suite. Prints the reports Tune saw, as JSON.

    python tests/handover_trial.py STORAGE
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from harness.launch.worker import _await_handed_reports

REPORTS = 2
SLOW_S = 6.0
"""Tune's pause on each result: longer than a finished Train run takes to return, so the last
report still waits in the hand-over queue when the trainable ends (a wedge without the wait)."""


def _worker(config: dict[str, Any]) -> None:
    for i in range(REPORTS):
        ray.train.report({"i": i})


def _trial(config: dict[str, Any]) -> None:
    run = ray.train.RunConfig(name=f"handover-{time.time_ns()}", storage_path=config["storage"],
                              callbacks=[TuneReportCallback()])
    TorchTrainer(_worker, scaling_config=ray.train.ScalingConfig(num_workers=1),
                 run_config=run).fit()
    _await_handed_reports()  # what harness.launch.worker._train_run does after fit()


class _SlowTune(tune.Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.seen.append(int(result["i"]))
        time.sleep(SLOW_S)


def main(storage: str) -> None:
    ray.init(num_cpus=2, include_dashboard=False)
    slow = _SlowTune()
    trainable = tune.with_resources(_trial, tune.PlacementGroupFactory([{"CPU": 0.01}]))
    tune.Tuner(trainable, param_space={"storage": storage},
               run_config=tune.RunConfig(storage_path=storage, callbacks=[slow])).fit()
    print(json.dumps(slow.seen))


if __name__ == "__main__":
    main(sys.argv[1])
