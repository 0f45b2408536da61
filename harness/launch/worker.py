"""Trial side of a sweep on Ray Tune: what crosses the Ray boundary, and the trainable.

The driver hands each trial a :class:`TrialSpec` (in Tune's ``param_space``); the trial trains in
its own worker and reports everything through ``tune.report`` as one :class:`Report` per call,
which :mod:`harness.launch.callback` writes to MLflow on the driver (one writer per store).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.config import TrialConfig
from harness.prefix import PrefixStore, Share
from harness.tracking import TrialStatus

REPORT_KEY = "harness"
"""The one key of a ``tune.report`` that carries a :class:`Report` (a JSON string)."""


@dataclass(frozen=True)
class TrialSpec:
    """Everything a Ray trial needs: the resolved trial and where to run it."""

    trial: dict[str, Any]  # TrialConfig.model_dump(mode="json")
    hash: str
    storage: str  # checkpoints under <storage>/checkpoints/<hash>
    cwd: str  # the submit folder: relative paths (data.path, HARNESS_CACHE) mean it
    threads: int  # torch CPU threads: one per resources.cpu
    share: dict[str, Any] | None = None  # harness.prefix.Share.to_param(); None: no sharing

    @classmethod
    def of(cls, trial: TrialConfig, storage: Path, cwd: Path, cpus: float,
           share: Share | None = None) -> TrialSpec:
        return cls(trial.model_dump(mode="json"), trial.hash, str(storage), str(cwd),
                   max(1, int(cpus)), share.to_param() if share is not None else None)

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

        extra, self._extra = self._extra, Report()
        report.params, report.artifacts, report.tags = extra.params, extra.artifacts, extra.tags
        tune.report(report.encode())

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


def trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, resumed from its hash-keyed checkpoint."""
    import torch

    from harness.train import run_trial

    logging.basicConfig(level=logging.WARNING)
    spec = TrialSpec.of_trial_config(config)
    if Path(spec.cwd).is_dir():
        # Tune starts each trial in its own folder; relative paths (data.path, HARNESS_CACHE)
        # mean the folder the sweep was submitted from, as --dry-run shows them.
        os.chdir(spec.cwd)
    torch.set_num_threads(spec.threads)
    storage = Path(spec.storage)
    run_trial(spec.config(), TuneTracker(), storage / "checkpoints" / spec.hash,
              share=spec.prefix_share(), prefixes=PrefixStore(storage))
