"""Run a sweep on Ray Tune, tracked in MLflow from the driver (one writer per store).

Flow: the sweep's trials (expanded once) -> skip trials whose MLflow run is already finished or
diverged (found by trial hash, :meth:`harness.store.Store.finished`) -> Ray Tune runs the rest,
each trial in its own worker (:mod:`harness.launch.worker`) with ``tune.with_resources`` -> every
``tune.report`` reaches :class:`~harness.launch.callback.MLflowCallback` on the driver, which
writes it to the trial's child run under the sweep's parent run.

Fault tolerance: each trial checkpoints under ``<storage>/checkpoints/<trial hash>/``. Ray's
``FailureConfig(max_failures)`` restarts a crashed trial, which resumes from that checkpoint;
``harness resume NAME`` (or resubmitting the same YAML) reruns only the unfinished trials, and
they too resume from their checkpoints. The checkpoint folder is keyed by content hash, so it is
found whichever way a trial is restarted. On a multi-node cluster ``storage`` must be shared.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import SweepConfig, TrialConfig
from harness.launch.callback import MLflowCallback, tune_callback, tune_stopper
from harness.launch.ray_setup import init_ray, ray_env, trial_slots
from harness.launch.search import branch_searcher
from harness.launch.worker import TrialSpec, trainable
from harness.locks import exclusive, sweep_lock_path
from harness.naming import human, run_name
from harness.prefix import PrefixStore, plan_sharing
from harness.preflight import (
    check_data,
    check_replays,
    check_resources,
    check_storage,
    default_storage,
)
from harness.store import Store
from harness.tracking import TrialStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmitSummary:
    """What a submit did."""

    total: int
    skipped: int
    finished: int
    diverged: int
    failed: int
    interrupted: bool
    wall_s: float
    flops_budgets: float = 0.0  # training FLOPs of the trials that ended in this submit, alone
    flops_trained: float = 0.0  # what their work logs say they trained (shared prefixes not
    # counted, steps retrained after a crash counted again)


def submit(
    sweep: SweepConfig,
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    uri: str | None = None,
    storage: Path | None = None,
) -> SubmitSummary:
    """Run every unfinished trial of ``sweep`` on Ray Tune; finished ones are skipped by hash."""
    address = ray_env(address)
    t0 = time.monotonic()
    trials = sweep.expand()
    storage = storage or default_storage()
    check_storage(storage, [])  # writable, before MLflow or Ray is touched
    busy = (f"sweep '{sweep.name}' is being run by another submit or resume ({{holder}}): "
            f"wait for it to end, or stop it and `harness resume {sweep.name}`")
    with exclusive(sweep_lock_path(storage, sweep.name), busy):
        return _submit(sweep, trials, storage, address, max_concurrent, uri, t0)


def _submit(sweep: SweepConfig, trials: list[TrialConfig], storage: Path, address: str | None,
            max_concurrent: int | None, uri: str | None, t0: float) -> SubmitSummary:
    ids = check_data(trials)
    store = Store(uri)
    done = store.finished(sweep.name)
    check_replays(done, ids, {t.hash: run_name(t, sweep) for t in trials})
    todo = [t for t in trials if t.hash not in done]
    plan = plan_sharing(todo, PrefixStore(storage), sweep.share_prefixes)
    check_storage(storage, todo, plan)  # room for the checkpoints of what will run
    log.info("%s: %d trials, %d already finished, %d to run", sweep.name, len(trials),
             len(trials) - len(todo), len(todo))
    budgets, trained = plan.tokens(todo)
    if budgets > trained:
        log.info("%s: shared prefixes: %s tokens to train for budgets of %s (%.2fx)",
                 sweep.name, human(trained), human(budgets), trained / budgets)
    cb = MLflowCallback(sweep, trials, store, done_before=set(done),
                        inherited=plan.inherited_tokens(todo))
    if not todo:
        cb.close(interrupted=False)
        return _summary(cb, trials, len(trials), False, t0)
    from ray import tune

    init_ray(address)
    workers = max(t.train.workers for t in todo)
    check_resources(sweep, workers)
    res = sweep.resources
    specs = [TrialSpec.of(t, storage, Path.cwd(), res.cpu, plan.shares.get(t.hash), res.gpu)
             for t in todo]
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(specs)),
        tune_config=tune.TuneConfig(
            search_alg=branch_searcher(specs, storage),
            num_samples=len(specs),
            # always a limit: without one Tune keeps a single searcher trial pending at a time;
            # sized by the widest trial, so a Train run never waits on workers held by others
            max_concurrent_trials=(max_concurrent or sweep.max_concurrent
                                   or trial_slots(res.cpu * workers, res.gpu * workers)),
            trial_name_creator=lambda tr: run_name(TrialSpec.of_trial_config(tr.config).config(),
                                                   sweep),
            trial_dirname_creator=lambda tr: TrialSpec.of_trial_config(tr.config).hash,
        ),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage / "ray"),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[tune_callback(cb)],
            stop=tune_stopper(cb),
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        log.warning("interrupted")
    except (EOFError, OSError) as e:
        # Ray reads its own state files back as it ends; a full disk leaves them torn. The
        # trials' states come from the callback, so report those rather than a traceback.
        log.warning("Ray could not read or write its state under %s: %s", storage / "ray",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
    unfinished = [t.hash for t in todo
                  if not cb.status_of(t.hash).done and cb.status_of(t.hash) != TrialStatus.FAILED]
    interrupted = bool(unfinished)
    cb.close(interrupted=interrupted)
    if cb.fatal is not None:
        raise cb.fatal  # one line from the CLI; resume restores every point from the records
    return _summary(cb, trials, len(trials) - len(todo), interrupted, t0)


def trial_resources(specs: list[TrialSpec]) -> Any:
    """Tune's reservation per trial: ``resources`` as given when every trial has one worker;
    else by trial (:meth:`TrialSpec.resources`: a multi-worker trial's Train workers reserve
    their own)."""
    if all(s.workers == 1 for s in specs):
        return {"cpu": specs[0].cpus, "gpu": specs[0].gpus}
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    return lambda config: PlacementGroupFactory(TrialSpec.of_trial_config(config).resources())


def _summary(
    cb: MLflowCallback, trials: list[TrialConfig], skipped: int, interrupted: bool, t0: float
) -> SubmitSummary:
    states = [lv.status for lv in cb.live.values()]
    ended = [(cb.by_hash[h], lv) for h, lv in cb.live.items() if lv.status.done]
    return SubmitSummary(
        total=len(trials),
        skipped=skipped,
        finished=states.count(TrialStatus.FINISHED),
        diverged=states.count(TrialStatus.DIVERGED),
        failed=states.count(TrialStatus.FAILED),
        interrupted=interrupted,
        wall_s=time.monotonic() - t0,
        flops_budgets=sum(t.total_flops for t, _ in ended),
        flops_trained=sum(t.model.flops_per_token(t.train.seq_len) * lv.tokens_trained
                          for t, lv in ended),
    )
