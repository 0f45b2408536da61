"""Run a sweep on Ray Tune, tracked in MLflow from the driver (one writer per store).

Flow: expand the sweep -> skip trials whose MLflow run is already finished or diverged (found by
trial hash) -> Ray Tune runs the rest, each trial in its own worker with ``tune.with_resources``
-> every ``tune.report`` reaches :class:`MLflowCallback` on the driver, which writes it to the
trial's child run under the sweep's parent run.

Fault tolerance: each trial checkpoints under ``<storage>/checkpoints/<trial hash>/``. Ray's
``FailureConfig(max_failures)`` restarts a crashed trial, which resumes from that checkpoint;
``harness resume NAME`` (or resubmitting the same YAML) reruns only the unfinished trials, and
they too resume from their checkpoints. The checkpoint folder is keyed by content hash, so it is
found whichever way a trial is restarted. On a multi-node cluster ``storage`` must be shared.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import SweepConfig, TrialConfig
from harness.naming import run_name
from harness.preflight import check_resources, check_storage, default_storage
from harness.tracking import (
    MLflowTracker,
    find_runs,
    get_or_create_experiment,
    mlflow_client,
)

log = logging.getLogger(__name__)

DONE = ("finished", "diverged")
_KEY = "harness"  # the one key of a tune.report that carries our payload (a JSON string)


class TuneTracker:
    """Trial-side tracker: everything goes to the driver through ``tune.report``."""

    def __init__(self) -> None:
        self._extra: dict[str, Any] = {"params": {}, "artifacts": {}, "tags": {}}

    def _send(self, payload: dict[str, Any]) -> None:
        from ray import tune

        body = {**payload, **{k: v for k, v in self._extra.items() if v}}
        self._extra = {"params": {}, "artifacts": {}, "tags": {}}
        tune.report({_KEY: json.dumps(body), "step": payload.get("step", -1)})

    def log_params(self, params: dict[str, Any]) -> None:
        self._extra["params"].update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._send({"step": step, "metrics": metrics})

    def log_artifact(self, name: str, text: str) -> None:
        self._extra["artifacts"][name] = text

    def set_tags(self, tags: dict[str, str]) -> None:
        self._extra["tags"].update(tags)

    def finish(self, status: str) -> None:
        self._send({"status": status})


def trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, resumed from its hash-keyed checkpoint."""
    import torch

    from harness.train import run_trial

    logging.basicConfig(level=logging.WARNING)
    if Path(config["cwd"]).is_dir():
        # Tune starts each trial in its own folder; relative paths (data.path, HARNESS_CACHE)
        # mean the folder the sweep was submitted from, as --dry-run shows them.
        os.chdir(config["cwd"])
    trial = TrialConfig.model_validate(config["point"]["trial"])
    torch.set_num_threads(max(1, int(config["cpus"])))
    ckpt = Path(config["storage"]) / "checkpoints" / trial.hash
    run_trial(trial, TuneTracker(), ckpt)


@dataclass
class _Live:
    """Driver-side view of one trial for MLflow and the progress line."""

    tracker: MLflowTracker
    tokens_total: int
    tokens: int = 0
    status: str = "pending"
    loss: float = float("nan")


class MLflowCallback:
    """Writes every trial's reports to its MLflow child run; prints progress."""

    def __init__(self, sweep: SweepConfig, trials: list[TrialConfig], uri: str | None) -> None:
        self.sweep = sweep
        self.client = mlflow_client(uri)
        self.experiment_id = get_or_create_experiment(self.client, sweep.name)
        self.parent_id = parent_run(self.client, self.experiment_id, sweep)
        self.by_hash = {t.hash: t for t in trials}
        self.n_todo, self.todo_tokens = len(trials), 0
        self.live: dict[str, _Live] = {}
        self.started = time.monotonic()
        self.last_print = 0.0

    def tracker_for(self, trial_hash: str) -> _Live:
        if trial_hash not in self.live:
            trial = self.by_hash[trial_hash]
            tags = {
                "mlflow.parentRunId": self.parent_id,
                "sweep": self.sweep.name,
                "arm": trial.optim.arm,
            }
            tracker = MLflowTracker.attach(
                self.client, self.experiment_id, trial_hash, run_name(trial, self.sweep), tags
            )
            total = trial.train.steps * trial.train.batch_tokens
            self.live[trial_hash] = _Live(tracker=tracker, tokens_total=total)
        return self.live[trial_hash]

    def on_result(self, trial_hash: str, result: dict[str, Any]) -> None:
        body = json.loads(result[_KEY])
        live = self.tracker_for(trial_hash)
        live.status = "running"
        tr = live.tracker
        if body.get("tags"):
            tr.set_tags(body["tags"])
        if body.get("params"):
            tr.log_params(body["params"])
        if "metrics" in body:
            tr.log_metrics(body["metrics"], step=body["step"])
            live.tokens = int(body["metrics"].get("tokens", live.tokens))
            live.loss = body["metrics"].get("train/loss", live.loss)
        for name, text in body.get("artifacts", {}).items():
            tr.log_artifact(name, text)
        if "status" in body:
            tr.finish(body["status"])
            live.status = body["status"]
        self.progress()

    def status_of(self, trial_hash: str) -> str:
        live = self.live.get(trial_hash)
        return live.status if live is not None else "pending"

    def on_error(self, trial_hash: str, reason: str = "") -> None:
        live = self.tracker_for(trial_hash)
        live.tracker.finish("failed")
        live.status = "failed"
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
            if live.status in ("running", "pending") and interrupted:
                live.tracker.finish("interrupted")
        statuses = [lv.status for lv in self.live.values()]
        done = all(s in DONE for s in statuses) and len(statuses) == len(self.by_hash)
        self.client.set_tag(self.parent_id, "status", "finished" if done else "incomplete")
        self.client.set_terminated(self.parent_id, "FINISHED" if done else "KILLED")


def progress_line(
    live: dict[str, _Live], n_trials: int, elapsed: float, total_tokens: int
) -> str:
    """``2/4 done · 1 running · 0 failed · 1.2M/4.0M tokens · ETA 1m20s``."""
    states = [lv.status for lv in live.values()]
    done = sum(s in DONE for s in states)
    tokens = sum(lv.tokens for lv in live.values())
    total = max(total_tokens, 1)
    frac = tokens / total
    eta = f"{elapsed * (1 - frac) / frac:.0f}s" if frac > 0.01 else "?"
    return (
        f"{done}/{n_trials} done · {states.count('running')} running · "
        f"{states.count('failed')} failed · {tokens / 1e6:.2f}M/{total / 1e6:.2f}M tokens "
        f"· ETA {eta}"
    )


def parent_run(client: Any, experiment_id: str, sweep: SweepConfig) -> str:
    """The sweep's parent run (created once; later submits reattach)."""
    runs = find_runs(client, experiment_id, "tags.kind = 'sweep'")
    if runs:
        run_id = runs[0].info.run_id
    else:
        tags = {"kind": "sweep", "sweep": sweep.name, "mlflow.note.content": sweep.description}
        run_id = client.create_run(experiment_id, tags=tags, run_name=sweep.name).info.run_id
    client.log_text(run_id, sweep.model_dump_json(indent=1), "sweep.json")
    client.set_tag(run_id, "status", "running")
    return run_id


def finished_runs(sweep_name: str, uri: str | None = None) -> dict[str, Any]:
    """The sweep's finished or diverged runs (never rerun), by trial hash."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(sweep_name)
    if exp is None:
        return {}
    runs = find_runs(client, exp.experiment_id, "tags.trial_hash != ''")
    return {r.data.tags["trial_hash"]: r for r in runs if r.data.tags.get("status") in DONE}


def backfill_params(trials: list[TrialConfig], runs: dict[str, Any], uri: str | None) -> int:
    """Log the derived params (arm, sizes, data_sha) a finished run lacks; return runs repaired.

    Runs finished by harness versions that did not log them are otherwise left out of the
    analysis, which groups runs by these params. Only missing keys are logged (MLflow params are
    write-once).
    """
    from mlflow.entities import Param

    from harness.data import load_data
    from harness.train import run_params

    client, repaired = None, 0
    for trial in trials:
        run = runs.get(trial.hash)
        if run is None or "arm" in run.data.params:
            continue
        params = run_params(trial, load_data(trial.data))
        missing = {k: v for k, v in params.items() if k not in run.data.params}
        client = client or mlflow_client(uri)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in missing.items()])
        repaired += 1
    if repaired:
        log.info("logged the missing derived params of %d finished runs", repaired)
    return repaired


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


def _tune_callback(cb: MLflowCallback) -> Any:
    from ray import tune

    class _Callback(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[no-untyped-def]
            cb.on_result(trial.config["point"]["hash"], result)

        def on_trial_error(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
            cb.on_error(trial.config["point"]["hash"], _last_error_line(trial.error_file))

    return _Callback()


def _last_error_line(path: str | None) -> str:
    """The last line of a Ray trial's error file (the exception), or ''."""
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines() if path else []
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def ray_env(address: str | None) -> str | None:
    """Resolve the cluster address and set Ray's environment; call before importing ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if address and "RAY_AUTH_MODE" not in os.environ and token.exists():
        # `ray start --head` enables token auth and writes this token; a driver joining with an
        # explicit address must opt in to send it.
        os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return address


def init_ray(address: str | None) -> None:
    """Embedded local Ray unless an address (or ``RAY_ADDRESS``) names a running cluster."""
    import ray

    if ray.is_initialized():
        return
    for quiet in ("ray.tune.analysis", "ray.tune.tune", "ray._private.authentication"):
        logging.getLogger(quiet).setLevel(logging.ERROR)
    ray.init(
        address=address,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env={"env_vars": {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}},
    )


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
    done = finished_runs(sweep.name, uri)
    backfill_params(trials, done, uri)
    todo = [t for t in trials if t.hash not in done]
    check_storage(storage, todo)  # room for the checkpoints of what will run
    log.info("%s: %d trials, %d already finished, %d to run", sweep.name, len(trials),
             len(trials) - len(todo), len(todo))
    cb = MLflowCallback(sweep, trials, uri)
    cb.n_todo = len(todo)
    cb.todo_tokens = sum(t.train.steps * t.train.batch_tokens for t in todo)
    if not todo:
        cb.close(interrupted=False)
        return _summary(cb, trials, len(trials), False, t0)
    from ray import tune

    init_ray(address)
    check_resources(sweep)
    points = [{"trial": t.model_dump(mode="json"), "hash": t.hash} for t in todo]
    res = sweep.resources
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu}),
        param_space={
            "point": tune.grid_search(points),
            "storage": str(storage),
            "cwd": str(Path.cwd()),
            "cpus": res.cpu,
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or sweep.max_concurrent,
            trial_name_creator=lambda tr: run_name(
                TrialConfig.model_validate(tr.config["point"]["trial"]), sweep
            ),
            trial_dirname_creator=lambda tr: tr.config["point"]["hash"],
        ),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage / "ray"),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[_tune_callback(cb)],
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
    unfinished = [t.hash for t in todo if cb.status_of(t.hash) not in (*DONE, "failed")]
    interrupted = bool(unfinished)
    cb.close(interrupted=interrupted)
    return _summary(cb, trials, len(trials) - len(todo), interrupted, t0)


def _summary(
    cb: MLflowCallback, trials: list[TrialConfig], skipped: int, interrupted: bool, t0: float
) -> SubmitSummary:
    states = [lv.status for lv in cb.live.values()]
    return SubmitSummary(
        total=len(trials),
        skipped=skipped,
        finished=states.count("finished"),
        diverged=states.count("diverged"),
        failed=states.count("failed"),
        interrupted=interrupted,
        wall_s=time.monotonic() - t0,
    )
