"""Trial side of a sweep on Ray Tune: what crosses the Ray boundary, and the trainable.

The driver hands each trial a :class:`TrialSpec` (in Tune's ``param_space``); the trial trains in
its own worker and reports everything through ``tune.report`` as one :class:`Report` per call,
which :mod:`harness.launch.callback` writes to MLflow on the driver (one writer per store).

A trial of ``train.workers > 1`` is a Ray Train run inside its Tune trial (Ray's "Ray Train
with Ray Tune" pattern): the Tune trial is a light driver that starts a ``TorchTrainer`` of that
many workers (each ``resources.cpu`` / ``resources.gpu``; gloo on CPU, nccl on CUDA) and
returns when it ends. Every worker runs :func:`harness.train.run_trial` on its rank; rank 0's
reports reach Tune through Ray Train's ``TuneReportCallback``, so the driver side is the same;
the Tune trial returns only once Tune has taken the last of them (:func:`_await_handed_reports`).
A worker that dies fails the Train run (no retry inside it), hence the Tune trial, which Tune
retries (``max_failures``): the new run resumes from the trial's checkpoint like any other.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import TrialConfig
from harness.prefix import PrefixStore, Share
from harness.tracking import TrialStatus

if TYPE_CHECKING:
    from harness.distributed import World

log = logging.getLogger(__name__)

REPORT_KEY = "harness"
"""The one key of a ``tune.report`` that carries a :class:`Report` (a JSON string)."""

DRIVER_BUNDLE = {"memory": 1.0}
"""What Tune reserves beside the empty head bundle of a multi-worker trial's driver (Tune needs
one non-empty bundle): the driver only starts and watches the Train workers, which reserve
their own CPUs and GPUs, so on 2 CPUs a trial of 2 one-CPU workers fits."""


@dataclass(frozen=True)
class TrialSpec:
    """Everything a Ray trial needs: the resolved trial and where to run it."""

    trial: dict[str, Any]  # TrialConfig.model_dump(mode="json")
    hash: str
    storage: str  # checkpoints under <storage>/checkpoints/<hash>
    cwd: str  # the submit folder: relative paths (data.path, HARNESS_CACHE) mean it
    cpus: float  # resources.cpu and resources.gpu: per worker of a multi-worker trial
    share: dict[str, Any] | None = None  # harness.prefix.Share.to_param(); None: no sharing
    gpus: float = 0.0

    @classmethod
    def of(cls, trial: TrialConfig, storage: Path, cwd: Path, cpus: float,
           share: Share | None = None, gpus: float = 0.0) -> TrialSpec:
        return cls(trial.model_dump(mode="json"), trial.hash, str(storage), str(cwd), cpus,
                   share.to_param() if share is not None else None, gpus)

    @property
    def threads(self) -> int:
        """Torch CPU threads of each process: one per whole ``resources.cpu``."""
        return max(1, int(self.cpus))

    @property
    def workers(self) -> int:
        return int(self.trial["train"].get("workers", 1))

    def resources(self) -> list[dict[str, float]]:
        """The bundles Tune reserves for the trial: all of it for one worker; for a Ray Train
        run none for its driver (an empty head bundle) and a token one beside it, since the
        Train workers reserve their own."""
        if self.workers == 1:
            return [{"CPU": self.cpus, "GPU": self.gpus}]
        return [{}, DRIVER_BUNDLE]

    def config(self) -> TrialConfig:
        return TrialConfig.model_validate(self.trial)

    def prefix_share(self) -> Share | None:
        return Share.of(self.share) if self.share is not None else None

    def to_param(self) -> dict[str, Any]:
        """The spec as Tune's ``param_space`` carries it (Tune rebuilds dataclasses as tuples)."""
        return asdict(self)

    @classmethod
    def of_trial_config(cls, config: dict[str, Any]) -> TrialSpec:
        """The spec of a Ray trial, from its resolved ``trial.config`` (or the trainable's)."""
        return cls(**config["spec"])


@dataclass
class Report:
    """One ``tune.report`` of a trial: metrics at a step and/or its final status, plus the
    params, artifacts and tags logged since the last report."""

    step: int = -1
    metrics: dict[str, float] | None = None
    status: TrialStatus | None = None
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def encode(self) -> dict[str, Any]:
        return {REPORT_KEY: json.dumps(asdict(self)), "step": self.step}

    @classmethod
    def decode(cls, result: dict[str, Any]) -> Report:
        body = json.loads(result[REPORT_KEY])
        status = body.pop("status")
        return cls(**body, status=TrialStatus(status) if status is not None else None)


class TuneTracker:
    """Trial-side tracker: everything goes to the driver through ``tune.report``."""

    def __init__(self) -> None:
        self._extra = Report()

    def _send(self, report: Report) -> None:
        from ray import tune

        tune.report(self._with_extra(report).encode())

    def _with_extra(self, report: Report) -> Report:
        extra, self._extra = self._extra, Report()
        report.params, report.artifacts, report.tags = extra.params, extra.artifacts, extra.tags
        return report

    def log_params(self, params: dict[str, Any]) -> None:
        self._extra.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._send(Report(step=step, metrics=metrics))

    def log_artifact(self, name: str, text: str) -> None:
        self._extra.artifacts[name] = text

    def set_tags(self, tags: dict[str, str]) -> None:
        self._extra.tags.update(tags)

    def finish(self, status: TrialStatus) -> None:
        self._send(Report(status=TrialStatus(status)))


class TrainTracker(TuneTracker):
    """Tracker of one Ray Train worker: rank 0 reports through ``ray.train.report`` (which
    ``TuneReportCallback`` hands to Tune); the other ranks report nothing at the same calls,
    since every worker must call it equally often."""

    def __init__(self, main: bool) -> None:
        super().__init__()
        self.main = main

    def _send(self, report: Report) -> None:
        import ray.train

        ray.train.report(self._with_extra(report).encode() if self.main else {})


def trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, resumed from its hash-keyed checkpoint; a
    multi-worker trial runs as a Ray Train run (:func:`_train_run`)."""
    spec = TrialSpec.of_trial_config(config)
    if spec.workers > 1:
        _train_run(spec)
        return
    _run(spec, TuneTracker())


def _run(spec: TrialSpec, tracker: TuneTracker, world: World | None = None) -> None:
    """One process's part of the trial: in the submit folder, with its threads."""
    import torch

    from harness.train import run_trial

    logging.basicConfig(level=logging.WARNING)
    if Path(spec.cwd).is_dir():
        # Tune starts each trial in its own folder; relative paths (data.path, HARNESS_CACHE)
        # mean the folder the sweep was submitted from, as --dry-run shows them.
        os.chdir(spec.cwd)
    torch.set_num_threads(spec.threads)
    storage = Path(spec.storage)
    run_trial(spec.config(), tracker, storage / "checkpoints" / spec.hash,
              share=spec.prefix_share(), prefixes=PrefixStore(storage), world=world)


def _train_run(spec: TrialSpec) -> None:
    """The Tune trial of a multi-worker trial: a Ray Train ``TorchTrainer`` of ``workers``
    processes, rank 0's reports handed to Tune; raises when a worker fails."""
    import secrets

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = spec.gpus > 0
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec.to_param()},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.workers, use_gpu=gpu,
            resources_per_worker={"CPU": spec.cpus, **({"GPU": spec.gpus} if gpu else {})}),
        run_config=ray.train.RunConfig(
            # a fresh name per attempt: the trial's own checkpoint is what resumes it
            name=f"{spec.hash}-{secrets.token_hex(3)}",
            storage_path=str(Path(spec.storage) / "ray-train"),
            failure_config=ray.train.FailureConfig(max_failures=0),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
    _await_handed_reports()


HANDOVER_TIMEOUT_S = 300.0
"""How long a finished multi-worker trial waits for Tune to take its last reports."""


def _await_handed_reports(timeout_s: float = HANDOVER_TIMEOUT_S, quiet_polls: int = 3) -> None:
    """Return once Tune has taken every report Ray Train handed over, so that the end-of-trial
    result this trainable's return adds cannot wedge the trial.

    Ray (2.60) moves each ``TuneReportCallback`` report from an inter-actor queue into the Tune
    session's one-slot result queue on the trial's main thread, and the end of a function
    trainable puts its own closing result into that slot. When a finished Train run returns
    while its last report still waits in the inter-actor queue, the main thread blocks for ever
    on a slot only it empties (seen under load: the trial trained to the end, then the sweep
    never returned). Waiting until both queues stay empty for ``quiet_polls`` polls closes that
    window; without that session or its queues (another Ray) there is nothing to wait for."""
    import time

    try:
        from ray.train._internal.session import get_session
    except ImportError:  # a Ray without this session: nothing to wait for
        return
    session = get_session()
    handed = getattr(session, "_inter_actor_queue", None)
    slot = getattr(session, "result_queue", None)
    if handed is None or slot is None:
        return
    deadline, quiet = time.monotonic() + timeout_s, 0
    while quiet < quiet_polls and time.monotonic() < deadline:
        quiet = quiet + 1 if handed.empty() and slot.empty() else 0
        time.sleep(0.1)
    if quiet < quiet_polls:
        log.warning("Tune did not take the last reports of this trial in %.0f s", timeout_s)


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker trial (its process group is set up)."""
    from harness.distributed import World

    spec = TrialSpec.of_trial_config(config)
    world = World.current()
    _run(spec, TrainTracker(world.main), world)
