"""Driver side of a sweep: every trial's reports go to its MLflow run; a progress line.

Ray Tune calls :func:`tune_callback`'s hooks on the driver for each ``tune.report`` of a trial
(:class:`harness.launch.worker.Report`) and for each trial error; :class:`MLflowCallback` writes
them through the trial's :class:`~harness.tracking.MLflowTracker` (one writer per store).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import SweepConfig, TrialConfig
from harness.launch.worker import Report, TrialSpec
from harness.naming import run_name
from harness.store import Store
from harness.tracking import MLflowTracker, TrialStatus

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """Driver-side view of one trial for MLflow and the progress line."""

    tracker: MLflowTracker
    tokens_total: int
    tokens: int = 0
    status: TrialStatus = TrialStatus.PENDING
    loss: float = float("nan")


class MLflowCallback:
    """Writes every trial's reports to its MLflow child run; prints progress."""

    def __init__(self, sweep: SweepConfig, trials: list[TrialConfig], store: Store) -> None:
        self.sweep = sweep
        self.store = store
        self.run = store.open_sweep(sweep)
        self.by_hash = {t.hash: t for t in trials}
        self.n_todo, self.todo_tokens = len(trials), 0
        self.live: dict[str, _Live] = {}
        self.started = time.monotonic()
        self.last_print = 0.0

    def tracker_for(self, trial_hash: str) -> _Live:
        if trial_hash not in self.live:
            trial = self.by_hash[trial_hash]
            tags = {
                "mlflow.parentRunId": self.run.parent_id,
                "sweep": self.sweep.name,
                "arm": trial.optim.arm,
            }
            tracker = self.store.open_trial(
                self.run.experiment_id, trial_hash, run_name(trial, self.sweep), tags
            )
            self.live[trial_hash] = _Live(tracker=tracker, tokens_total=trial.train.tokens_trained)
        return self.live[trial_hash]

    def on_result(self, trial_hash: str, report: Report) -> None:
        live = self.tracker_for(trial_hash)
        live.status = TrialStatus.RUNNING
        tr = live.tracker
        if report.tags:
            tr.set_tags(report.tags)
        if report.params:
            tr.log_params(report.params)
        if report.metrics is not None:
            tr.log_metrics(report.metrics, step=report.step)
            live.tokens = int(report.metrics.get("tokens", live.tokens))
            live.loss = report.metrics.get("train/loss", live.loss)
        for name, text in report.artifacts.items():
            tr.log_artifact(name, text)
        if report.status is not None:
            tr.finish(report.status)
            live.status = report.status
        self.progress()

    def status_of(self, trial_hash: str) -> TrialStatus:
        live = self.live.get(trial_hash)
        return live.status if live is not None else TrialStatus.PENDING

    def on_error(self, trial_hash: str, reason: str = "") -> None:
        live = self.tracker_for(trial_hash)
        live.tracker.finish(TrialStatus.FAILED)
        live.status = TrialStatus.FAILED
        name = run_name(self.by_hash[trial_hash], self.sweep)
        log.warning("trial %s (%s) failed: %s", name, trial_hash, reason or "see the Ray log")
        self.progress(force=True)

    def progress(self, force: bool = False) -> None:
        """One line: trials done/running/failed, tokens, ETA (at most every 10 s)."""
        now = time.monotonic()
        if not force and now - self.last_print < 10:
            return
        self.last_print = now
        log.info(progress_line(self.live, self.n_todo, now - self.started, self.todo_tokens))

    def close(self, interrupted: bool) -> None:
        for live in self.live.values():
            live.tracker.flush()
            if live.status in (TrialStatus.RUNNING, TrialStatus.PENDING) and interrupted:
                live.tracker.finish(TrialStatus.INTERRUPTED)
        statuses = [lv.status for lv in self.live.values()]
        done = all(s.done for s in statuses) and len(statuses) == len(self.by_hash)
        self.store.close_sweep(self.run.parent_id, complete=done)


def progress_line(
    live: dict[str, _Live], n_trials: int, elapsed: float, total_tokens: int
) -> str:
    """``2/4 done · 1 running · 0 failed · 1.2M/4.0M tokens · ETA 1m20s``."""
    states = [lv.status for lv in live.values()]
    done = sum(s.done for s in states)
    tokens = sum(lv.tokens for lv in live.values())
    total = max(total_tokens, 1)
    frac = tokens / total
    eta = f"{elapsed * (1 - frac) / frac:.0f}s" if frac > 0.01 else "?"
    return (
        f"{done}/{n_trials} done · {states.count(TrialStatus.RUNNING)} running · "
        f"{states.count(TrialStatus.FAILED)} failed · {tokens / 1e6:.2f}M/{total / 1e6:.2f}M "
        f"tokens · ETA {eta}"
    )


def tune_callback(cb: MLflowCallback) -> Any:
    """A ``ray.tune.Callback`` that hands each trial's reports and errors to ``cb``."""
    from ray import tune

    def spec(trial: Any) -> TrialSpec:
        return TrialSpec.of_trial_config(trial.config)

    class _Callback(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[no-untyped-def]
            cb.on_result(spec(trial).hash, Report.decode(result))

        def on_trial_error(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
            cb.on_error(spec(trial).hash, _last_error_line(trial.error_file))

    return _Callback()


def _last_error_line(path: str | None) -> str:
    """The last line of a Ray trial's error file (the exception), or ''."""
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines() if path else []
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
