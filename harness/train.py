"""One trial: config -> model, optimizer, data -> train loop -> logged loss curve.

``run_trial`` is resumable: a checkpoint every ``train.checkpoint_every`` tokens holds the model,
optimizer, step and the metric rows logged so far; a restarted trial loads it, replays the rows
(trackers drop points they already have) and continues, so on CPU the resumed curve equals the
uninterrupted one exactly. A finished trial leaves ``result.json`` and its final weights
``final.pt`` (model only, fp32; what ``harness rescore`` evaluates) and is never run twice.
Batches are a pure function of (seed, step), so no data state is needed to resume.

Data parallel (``world``, :mod:`harness.distributed`): every rank runs this same function in
lockstep. Rank 0 reads the data cache and the trial's record and checkpoints first (setting aside
what is damaged), then the others read what it chose; only rank 0 writes checkpoints, prefix
checkpoints, the work log, the record and the final weights. Every rank calls the tracker at the
same points (Ray Train's report is a barrier); only rank 0's tracker reports.

Evaluation: ``val/loss`` (the validation set, for selection) at every ``train.eval_every`` tokens
and at the last step; ``test/loss`` (the test set, for the numbers reported) at the last step of a
finished trial only, which keeps its cost to one more pass (see docs/design.md).

Each save keeps the checkpoint before it as ``ckpt.prev.pt``. A damaged ``ckpt.pt`` (torn,
zeroed, bytes changed, not this trainer's) is set aside with one warning and the trial resumes
from ``ckpt.prev.pt``, or restarts from step 0; a damaged ``result.json`` is set aside and the
trial trained again (resumed, where a checkpoint is left). Either way the curve is the same.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from harness.checkpoint import (
    STALE_TEMP_S,
    load_latest,
    remove_temps,
    save_atomic,
)
from harness.config import TrialConfig
from harness.data import load_data, split_ids
from harness.distributed import World
from harness.env import environment_tags, pick_device
from harness.prefix import PrefixStore, Share
from harness.record import (
    CKPT,
    FINAL,
    PREV,
    RESULT,
    DataChangedError,
    TrialRecord,
    TrialResult,
    clean_up,
    log_work,
    read_record,
    same_data,
    steps_trained,
    write_record,
)
from harness.store import trial_params
from harness.tracking import Tracker, TrialStatus
from harness.trainer import Trainer, Window

log = logging.getLogger(__name__)


@dataclass
class _WorkLog:
    """This process's lines in the trial's work log (``work.log``, :func:`log_work`)."""

    ckpt_dir: Path | None
    first: int  # the step this process started training at
    session: str = field(default_factory=lambda: secrets.token_hex(4))

    def note(self, reached: int) -> None:
        if self.ckpt_dir is not None:
            log_work(self.ckpt_dir, self.session, self.first, reached)


def _replay(tracker: Tracker, rows: list[tuple[int, dict[str, float]]]) -> None:
    for step, metrics in rows:
        tracker.log_metrics(metrics, step=step)


def _finished(tracker: Tracker, record: TrialRecord) -> TrialResult:
    """Replay a finished trial's record into the tracker without training again."""
    tracker.set_tags(record.tags)
    tracker.log_params(record.params)
    _replay(tracker, record.rows)
    for name, text in record.artifacts.items():
        tracker.log_artifact(name, text)
    tracker.finish(record.result.status)
    return record.result


def _resume(trainer: Trainer, ckpt_dir: Path) -> Path | None:
    """Load the newest checkpoint that reads back whole (damaged ones are set aside); returns
    the one loaded."""
    remove_temps(ckpt_dir / CKPT, older_than=STALE_TEMP_S)
    found = load_latest([ckpt_dir / CKPT, ckpt_dir / PREV], Trainer.STATE_KEYS,
                        map_location=trainer.device)
    if found is None:
        return None
    path, state = found
    trainer.load(state, path)
    log.info("trial %s resumed at step %d from %s", trainer.trial.hash, trainer.step, path.name)
    return path


def _start(trainer: Trainer, ckpt_dir: Path | None, share: Share | None,
           prefixes: PrefixStore | None) -> None:
    """Resume from the trial's own checkpoint, else start from its lineage's prefix checkpoint,
    else from step 0. Several ranks: rank 0 chooses (and sets aside what is damaged), the others
    load the file it loaded."""
    world = trainer.world
    chosen: Path | None = None
    if world.main:
        if ckpt_dir is not None:
            chosen = _resume(trainer, ckpt_dir)
        if trainer.step == 0 and share is not None and prefixes is not None:
            chosen = _start_from_prefix(trainer, share, prefixes)
    path, origin = world.from_main((chosen, trainer.origin))
    if not world.main and path is not None:
        found = load_latest([path], Trainer.STATE_KEYS, map_location=trainer.device)
        if found is None:
            raise RuntimeError(f"rank {world.rank}: cannot read {path}, which rank 0 loaded")
        trainer.load(found[1], path)
        trainer.origin = dict(origin)


def _start_from_prefix(trainer: Trainer, share: Share, prefixes: PrefixStore) -> Path | None:
    """A trial with no checkpoint of its own starts from the latest prefix checkpoint of its
    lineage at or before its cooldown start (:mod:`harness.prefix`); none: from step 0.
    Returns the checkpoint loaded."""
    for step in prefixes.latest(share.lineage, share.start):
        path = prefixes.path(share.lineage, step)
        found = load_latest([path], Trainer.STATE_KEYS, map_location=trainer.device)
        if found is None:
            continue
        try:
            trainer.load(found[1], path)
        except DataChangedError as e:  # kept from a run on other data (refused before any of
            # it is loaded): never mixed in
            log.warning("trial %s: prefix checkpoint %s skipped: %s", trainer.trial.hash, path,
                        str(e).splitlines()[0])
            continue
        trainer.origin = {"from": str(found[1].get("saved_by", "")), "step": step}
        log.info("trial %s starts at step %d from the prefix checkpoint of trial %s",
                 trainer.trial.hash, step, trainer.origin["from"])
        return path
    return None


def lineage_tags(trainer: Trainer, share: Share | None) -> dict[str, str]:
    """MLflow tags of a sharing trial: its lineage, its role, and the trunk it branched from
    with the tokens where it did."""
    if share is None:
        return {}
    role = share.role if trainer.origin or share.role != "branch" else "alone"
    tags = {"lineage.id": share.lineage, "lineage.role": role}
    if trainer.origin:
        tags["lineage.trunk_hash"] = trainer.origin["from"]
        tags["lineage.branch_tokens"] = str(trainer.origin["step"]
                                            * trainer.trial.train.batch_tokens)
    return tags


def _save_prefix(trainer: Trainer, share: Share | None, prefixes: PrefixStore | None) -> None:
    """At a step of ``share.saves``: the prefix checkpoint other budgets start from."""
    if share is None or prefixes is None or trainer.step not in share.saves:
        return
    path = prefixes.path(share.lineage, trainer.step)
    if path.exists():  # the same state, saved by another trial of the lineage
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temps(path, older_than=STALE_TEMP_S)  # a killed trunk's half-written one
    save_atomic({**trainer.state(), "saved_by": trainer.trial.hash}, path)


def run_trial(
    trial: TrialConfig,
    tracker: Tracker,
    checkpoint_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    share: Share | None = None,
    prefixes: PrefixStore | None = None,
    world: World | None = None,
) -> TrialResult:
    """Train one trial to its token budget, logging to ``tracker``; resume from checkpoints.

    With ``share`` and ``prefixes`` (:mod:`harness.prefix`), a trial with no checkpoint of its
    own starts from its lineage's prefix checkpoint and saves the ones ``share`` names.
    ``stop_after`` (steps) stops early without finishing the run, as a crash would; tests use it.
    ``world``: this process's rank of a multi-worker trial (default: the only one).
    """
    tc = trial.train
    world = world or World()
    if world.size != tc.workers:
        raise RuntimeError(f"train.workers is {tc.workers} but {world.size} processes run it")
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    done = None
    with world.main_first():
        data = load_data(trial.data, cache_dir)
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            done = read_record(ckpt_dir)
    if done is not None and ckpt_dir is not None:
        same_data(done.params.get("data_sha"), data, ckpt_dir / RESULT)
        log.info("trial %s already finished; replaying its record", trial.hash)
        return _finished(tracker, done)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = world.device(pick_device(tc.device))
    trainer = Trainer(trial, data, device, world)
    _start(trainer, ckpt_dir, share, prefixes)
    if not world.main:  # rank 0 alone writes checkpoints, prefixes, the work log and the record
        ckpt_dir, prefixes = None, None
    tags = {**environment_tags(device), "trial_hash": trial.hash, **lineage_tags(trainer, share)}
    params = trial_params(trial, data.fingerprint) | split_ids(data.fingerprint)
    tracker.set_tags(tags)
    tracker.log_params(params)
    tracker.log_artifact("trial.yaml", trial_yaml(trial))
    tracker.log_artifact("data.json", json.dumps(data.fingerprint, indent=1, sort_keys=True))
    _replay(tracker, trainer.rows)
    work = _WorkLog(ckpt_dir, trainer.step)
    try:
        status = _train(trainer, tracker, ckpt_dir, on_log, stop_after,
                        lambda: _save_prefix(trainer, share, prefixes), work)
    finally:  # the end, or an exception: what this process trained is noted either way
        work.note(trainer.step)
    if status == TrialStatus.INTERRUPTED:
        return _result(trainer, status)
    if ckpt_dir is not None:
        work = {"work.tokens_trained": str(steps_trained(ckpt_dir) * tc.batch_tokens)}
        tags |= work
        tracker.set_tags(work)
    result = _result(trainer, status)
    artifacts = {
        "max_logits.csv": trainer.logit_table(),
        "summary.json": json.dumps(
            {**asdict(result), "entropy": data.entropy, "hash": trial.hash}, indent=1
        ),
    }
    for name, text in artifacts.items():
        tracker.log_artifact(name, text)
    if ckpt_dir is not None:
        if status == TrialStatus.FINISHED:  # before the record: a finished trial has both
            save_atomic(trainer.final_weights(), ckpt_dir / FINAL)
        write_record(TrialRecord(result, trainer.rows, artifacts, params, tags), ckpt_dir)
        clean_up(ckpt_dir)
    tracker.finish(status)
    return result


def _train(
    trainer: Trainer,
    tracker: Tracker,
    ckpt_dir: Path | None,
    on_log: Callable[[int, dict[str, float]], None] | None,
    stop_after: int | None,
    save_prefix: Callable[[], None],
    work: _WorkLog,
) -> TrialStatus:
    """The loop; returns ``finished``, ``diverged`` or ``interrupted``. Each checkpoint notes
    the step reached in the trial's work log."""
    tc = trainer.trial.train
    eval_steps = max(1, tc.eval_every // tc.batch_tokens)
    ckpt_steps = max(1, tc.checkpoint_every // tc.batch_tokens)
    status = TrialStatus.FINISHED
    while trainer.step < tc.steps:
        t0 = time.perf_counter()
        loss, gnorm, tel, clipped = trainer.train_step()
        dt = time.perf_counter() - t0
        trainer.elapsed += dt
        window = trainer.window
        window.add(loss, gnorm, tel, clipped)
        window.tokens += tc.batch_tokens
        window.seconds += dt
        diverged = not math.isfinite(loss) or loss > tc.diverge_loss
        last = trainer.step == tc.steps or diverged
        if trainer.step % tc.log_every == 0 or last or trainer.step % eval_steps == 0:
            wants_eval = (trainer.step % eval_steps == 0 or last) and not diverged
            final = last and not diverged
            metrics = trainer.metrics(window, trainer.evaluate() if wants_eval else None,
                                      trainer.evaluate(trainer.test) if final else None)
            if last:
                metrics |= trainer.routing_metrics(metrics)
            trainer.rows.append((trainer.step, metrics))
            tracker.log_metrics(metrics, step=trainer.step)
            if on_log is not None:
                on_log(trainer.step, metrics)
            trainer.window = Window()
        if diverged:
            log.warning("trial %s diverged at step %d (loss %s)", trainer.trial.hash,
                        trainer.step, loss)
            status = TrialStatus.DIVERGED
            break
        if not last:
            save_prefix()
        if ckpt_dir is not None and trainer.step % ckpt_steps == 0 and not last:
            save_atomic(trainer.state(), ckpt_dir / CKPT, previous=ckpt_dir / PREV)
            work.note(trainer.step)
        if stop_after is not None and trainer.step >= stop_after:
            return TrialStatus.INTERRUPTED
    return status


def _result(trainer: Trainer, status: TrialStatus) -> TrialResult:
    last = trainer.rows[-1][1] if trainer.rows else {}
    vals = [m["val/loss"] for _, m in trainer.rows if "val/loss" in m]
    tests = [m["test/loss"] for _, m in trainer.rows if "test/loss" in m]
    tokens = trainer.tokens_seen
    return TrialResult(
        status=status,
        steps=trainer.step,
        tokens=tokens,
        flops=trainer.flops_per_token * tokens,
        final_train_loss=float(last.get("train/loss", math.nan)),
        final_val_loss=float(vals[-1]) if vals else math.nan,
        wall_s=trainer.elapsed,
        tokens_per_s=tokens / max(trainer.elapsed, 1e-9),
        final_test_loss=float(tests[-1]) if tests else math.nan,
    )


def trial_yaml(trial: TrialConfig) -> str:
    """The resolved trial as YAML (every default filled in): reproduce with ``harness train``."""
    import yaml

    return yaml.safe_dump(trial.model_dump(mode="json"), sort_keys=False)
