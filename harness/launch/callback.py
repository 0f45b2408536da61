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
from harness.tracking import MLflowTracker, RunDeletedError, StoreFullError, TrialStatus

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """Driver-side view of one trial for MLflow and the progress line."""

    tracker: MLflowTracker
    tokens_total: int
    tokens: int = 0  # trained in this sweep (tokens from a prefix checkpoint not counted)
    status: TrialStatus = TrialStatus.PENDING
    loss: float = float("nan")
    gone: bool = False  # its MLflow run was deleted: reports are dropped
    tokens_trained: int = 0  # its own processes trained (work.tokens_trained), once it ends


class MLflowCallback:
    """Writes every trial's reports to its MLflow child run; prints progress.

    ``trials`` are all of the sweep's trials, ``done_before`` the hashes of those the store
    already has as finished or diverged (skipped by this submit): the sweep is complete when
    every trial is one of those or ends done in this submit.
    """

    def __init__(self, sweep: SweepConfig, trials: list[TrialConfig], store: Store,
                 done_before: set[str], inherited: dict[str, int] | None = None) -> None:
        self.sweep = sweep
        self.store = store
        self.run = store.open_sweep(sweep)
        self.by_hash = {t.hash: t for t in trials}
        self.done_before = done_before
        todo = [t for t in trials if t.hash not in done_before]
        self.n_todo = len(todo)
        # tokens a trial starts with from a prefix checkpoint are not trained here: the
        # progress line and its ETA count only what is (harness.prefix)
        self.inherited = inherited or {}
        self.todo_tokens = sum(t.train.tokens_trained - self.inherited.get(t.hash, 0)
                               for t in todo)
        self.live: dict[str, _Live] = {}
        self.fatal: StoreFullError | None = None  # set: the sweep stops, the store takes no more
        self.clock = Throughput()
        self.last_print = time.monotonic()

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

    def on_start(self, trial_hash: str) -> None:
        """A trial's worker started: it counts as running from now on."""
        self.tracker_for(trial_hash).status = TrialStatus.RUNNING

    def on_result(self, trial_hash: str, report: Report) -> None:
        """Write one report to the trial's run. A deleted run is that trial's problem (its
        reports are dropped, the others go on); a full store stops the sweep."""
        live = self.tracker_for(trial_hash)
        if live.gone or self.fatal is not None:
            return
        try:
            self._write(live, report, self.inherited.get(trial_hash, 0))
        except StoreFullError as e:
            self.fatal = e
            log.error("harness: %s", e)
        except Exception as e:  # the MLflow client raises many types for a refused write
            if not (isinstance(e, RunDeletedError) or live.tracker.deleted()):
                raise
            live.gone, live.status = True, TrialStatus.FAILED
            name = run_name(self.by_hash[trial_hash], self.sweep)
            log.warning("trial %s: its MLflow run was deleted; its results are not stored "
                        "(the other trials go on; resubmit to rerun it)", name)
        self.progress()

    def _write(self, live: _Live, report: Report, inherited: int) -> None:
        live.status = TrialStatus.RUNNING
        tr = live.tracker
        if report.tags:
            tr.set_tags(self._named(report.tags))
            live.tokens_trained = int(report.tags.get("work.tokens_trained",
                                                      live.tokens_trained))
        if report.params:
            tr.log_params(report.params)
        if report.metrics is not None:
            tr.log_metrics(report.metrics, step=report.step)
            at = int(report.metrics.get("tokens", live.tokens + inherited))
            live.tokens = max(0, at - inherited)
            self.clock.observe(sum(lv.tokens for lv in self.live.values()))
            live.loss = report.metrics.get("train/loss", live.loss)
        for name, text in report.artifacts.items():
            tr.log_artifact(name, text)
        if report.status is not None:
            tr.finish(report.status)
            live.status = report.status

    def _named(self, tags: dict[str, str]) -> dict[str, str]:
        """``tags`` plus ``lineage.trunk``, the run name of the trunk a branch started from."""
        trunk = self.by_hash.get(tags.get("lineage.trunk_hash", ""))
        if trunk is None:
            return tags
        return {**tags, "lineage.trunk": run_name(trunk, self.sweep)}

    def status_of(self, trial_hash: str) -> TrialStatus:
        live = self.live.get(trial_hash)
        return live.status if live is not None else TrialStatus.PENDING

    def on_error(self, trial_hash: str, reason: str = "") -> None:
        live = self.tracker_for(trial_hash)
        if not live.gone and self.fatal is None:
            live.tracker.finish(TrialStatus.FAILED)
        live.status = TrialStatus.FAILED
        name = run_name(self.by_hash[trial_hash], self.sweep)
        log.warning("trial %s (%s) failed: %s", name, trial_hash, reason or "see the Ray log")
        self.progress(force=True)

    def progress(self, force: bool = False, every: float = 10.0) -> None:
        """One line: trials done/running/failed, tokens, ETA; at most every ``every`` seconds
        (Tune calls this on every step of its loop, so the line comes on a clock)."""
        now = time.monotonic()
        if not force and now - self.last_print < every:
            return
        self.last_print = now
        log.info(progress_line(self.live, self.n_todo, self.todo_tokens, self.clock))

    def complete(self) -> bool:
        """Every trial of the sweep is done: before this submit, or in it."""
        return all(h in self.done_before or self.status_of(h).done for h in self.by_hash)

    def close(self, interrupted: bool) -> None:
        if self.fatal is not None:
            return  # the store takes nothing more; the trials' records hold every point
        for live in [lv for lv in self.live.values() if not lv.gone]:
            live.tracker.flush()
            if live.status in (TrialStatus.RUNNING, TrialStatus.PENDING) and interrupted:
                live.tracker.finish(TrialStatus.INTERRUPTED)
        self.store.close_sweep(self.run.parent_id, complete=self.complete())


class Throughput:
    """Tokens per second measured from the first tokens reported (Ray's start-up and model
    building before it do not count), for an ETA of what is left."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.tokens0 = 0
        self.last: tuple[float, int] | None = None

    def observe(self, tokens: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.t0 is None:
            self.t0, self.tokens0 = now, tokens
        self.last = (now, tokens)

    def eta(self, remaining: int) -> float | None:
        """Seconds to train ``remaining`` tokens at the rate measured so far (None: no rate
        yet, i.e. fewer than two reports or no time between them)."""
        if self.t0 is None or self.last is None:
            return None
        dt, dn = self.last[0] - self.t0, self.last[1] - self.tokens0
        if dt <= 0 or dn <= 0:
            return None
        return remaining * dt / dn


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(
    live: dict[str, _Live], n_trials: int, total_tokens: int, clock: Throughput
) -> str:
    """``2/4 done · 2 running · 0 failed · 1.20M/4.00M tokens · ETA 1m20s``."""
    states = [lv.status for lv in live.values()]
    done = sum(s.done for s in states)
    tokens = sum(lv.tokens for lv in live.values())
    eta = clock.eta(max(total_tokens - tokens, 0))
    return (
        f"{done}/{n_trials} done · {states.count(TrialStatus.RUNNING)} running · "
        f"{states.count(TrialStatus.FAILED)} failed · {tokens / 1e6:.2f}M/"
        f"{max(total_tokens, 1) / 1e6:.2f}M tokens · ETA "
        f"{'?' if eta is None else _duration(eta)}"
    )


def tune_stopper(cb: MLflowCallback) -> Any:
    """A ``ray.tune.Stopper`` that ends the whole sweep once the store cannot take more."""
    from ray import tune

    class _Stopper(tune.Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return cb.fatal is not None

    return _Stopper()


def tune_callback(cb: MLflowCallback) -> Any:
    """A ``ray.tune.Callback`` that hands each trial's reports and errors to ``cb``."""
    from ray import tune

    def spec(trial: Any) -> TrialSpec:
        return TrialSpec.of_trial_config(trial.config)

    class _Callback(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
            cb.on_start(spec(trial).hash)

        def on_step_end(self, iteration, trials, **info):  # type: ignore[no-untyped-def]
            cb.progress()

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
