"""One trial: config -> model, optimizer, data -> train loop -> logged loss curve.

``run_trial`` is resumable: a checkpoint every ``train.checkpoint_every`` tokens holds the model,
optimizer, step and the metric rows logged so far; a restarted trial loads it, replays the rows
(trackers drop points they already have) and continues, so on CPU the resumed curve equals the
uninterrupted one exactly. A finished trial leaves ``result.json`` and its final weights
``final.pt`` (model only, fp32; what ``harness rescore`` evaluates) and is never run twice.
Batches are a pure function of (seed, step), so no data state is needed to resume.

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
from typing import Any

import torch
import torch.nn.functional as F

from harness.checkpoint import (
    STALE_TEMP_S,
    load_latest,
    remove_temps,
    save_atomic,
)
from harness.config import TrialConfig
from harness.data import TokenData, load_data, split_ids, train_batch
from harness.env import device_peak_flops, environment_tags, pick_device
from harness.evaluate import Batches, eval_sets, mean_loss
from harness.model.transformer import Telemetry, Transformer
from harness.optim import build_optimizer, qk_clip_
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
from harness.routing import routing_health
from harness.schedule import lr_multiplier
from harness.store import data_sha, trial_params
from harness.tracking import Tracker, TrialStatus

log = logging.getLogger(__name__)


def load_imbalance(loads_LE: torch.Tensor) -> torch.Tensor:
    """Max / mean tokens per expert (L_moe,) of loads (L_moe, E); 1 = balanced."""
    return loads_LE.amax(dim=1) / loads_LE.mean(dim=1).clamp_min(1e-9)


@dataclass
class _Window:
    """Statistics accumulated between two metric logs."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    max_logits: torch.Tensor | None = None  # (L, H) running max
    loads: torch.Tensor | None = None  # (L_moe, E) summed tokens per expert
    clipped: torch.Tensor | None = None  # (L,) heads clipped, summed
    peak_imbalance: float = 0.0  # largest per-step max / mean load (mean over MoE layers)
    tokens: int = 0
    seconds: float = 0.0

    def add(self, loss: float, gnorm: float, tel: Telemetry, clipped: torch.Tensor | None) -> None:
        self.losses.append(loss)
        self.grad_norms.append(gnorm)
        ml = tel.max_logits.float().cpu()
        self.max_logits = ml if self.max_logits is None else torch.maximum(self.max_logits, ml)
        ld = tel.expert_load.float().cpu()  # (L_moe, E)
        self.loads = ld if self.loads is None else self.loads + ld
        if ld.numel():
            step_imb = float(load_imbalance(ld).mean())
            self.peak_imbalance = max(self.peak_imbalance, step_imb)
        if clipped is not None:
            c = clipped.cpu().float()
            self.clipped = c if self.clipped is None else self.clipped + c


class Trainer:
    """State and steps of one trial; ``run_trial`` is the entry point."""

    def __init__(self, trial: TrialConfig, data: TokenData, device: torch.device) -> None:
        self.trial, self.data, self.device = trial, data, device
        tc = trial.train
        torch.manual_seed(tc.seed)
        self.model = Transformer(trial.model).to(device)
        self.optimizer = build_optimizer(self.model, trial.optim)
        self.forward: Callable[..., Any] = (
            torch.compile(self.model) if tc.compile else self.model  # type: ignore[assignment]
        )
        self.micro_bs = (tc.micro_batch_tokens or tc.batch_tokens) // tc.seq_len
        self.flops_per_token = trial.model.flops_per_token(tc.seq_len)
        self.val, self.test = eval_sets(trial, data)
        self.autocast = device.type == "cuda"
        self.step = 0
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.run_max_logits: torch.Tensor | None = None
        self.elapsed = 0.0
        self.window = _Window()  # steps since the last log; checkpointed, so a resumed log
        # averages the same steps as an uninterrupted one
        self.origin: dict[str, Any] = {}  # {"from": trunk hash, "step": n}: started from the
        # prefix checkpoint the trunk saved at step n (harness.prefix)

    @property
    def tokens_seen(self) -> int:
        """Tokens trained on so far (whole steps)."""
        return self.step * self.trial.train.batch_tokens

    # checkpoints -------------------------------------------------------------------------------
    STATE_KEYS = ("model", "optimizer", "step", "rows", "run_max_logits", "elapsed", "rng")

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rows": [[s, m] for s, m in self.rows],
            "run_max_logits": self.run_max_logits,
            "elapsed": self.elapsed,
            "rng": torch.get_rng_state(),
            "window": asdict(self.window),
            "data_sha": data_sha(self.data.fingerprint),
            "origin": dict(self.origin),
        }

    def load(self, state: dict[str, Any], path: Path | None = None) -> None:
        same_data(state.get("data_sha"), self.data, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.rows = [(int(s), dict(m)) for s, m in state["rows"]]
        self.run_max_logits = state["run_max_logits"]
        self.elapsed = float(state["elapsed"])
        torch.set_rng_state(state["rng"])
        self.window = _Window(**state.get("window", {}))
        self.origin = dict(state.get("origin") or {})

    # steps -------------------------------------------------------------------------------------
    def loss_of(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Telemetry]:
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            logits, tel = self.forward(x)  # (B, T, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        return ce, tel

    def train_step(self) -> tuple[float, float, Telemetry, torch.Tensor | None]:
        """One optimizer step over ``grad_accum`` micro-batches; returns loss and telemetry."""
        tc, opt = self.trial.train, self.optimizer
        total, max_logits, loads = 0.0, None, None
        for micro in range(tc.grad_accum):
            x, y = train_batch(self.data, tc.seq_len, self.micro_bs, tc.seed, self.step, micro)
            ce, tel = self.loss_of(x.to(self.device), y.to(self.device))
            ((ce + tel.aux_loss) / tc.grad_accum).backward()
            total += ce.item() / tc.grad_accum
            ml, ld = tel.max_logits, tel.expert_load
            max_logits = ml if max_logits is None else torch.maximum(max_logits, ml)
            loads = ld if loads is None else loads + ld
        assert max_logits is not None and loads is not None
        gnorm = self.clip_grads()
        mult = lr_multiplier(tc, self.step)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * mult
        opt.step()
        opt.zero_grad(set_to_none=True)
        clipped = None
        if self.trial.optim.qk_clip_tau is not None:
            clipped = qk_clip_(self.model, self.trial.optim.qk_clip_tau, max_logits)
        self.model.update_router_bias(loads, self.trial.model.moe.bias_rate(self.step))
        self.step += 1
        tel = Telemetry(max_logits=max_logits, expert_load=loads, aux_loss=tel.aux_loss.detach())
        return total, gnorm, tel, clipped

    def clip_grads(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.trial.train.grad_clip or math.inf
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def evaluate(self, batches: Batches | None = None) -> float:
        """Mean loss over ``batches`` (default: the validation set)."""
        return mean_loss(self.model, self.forward, self.val if batches is None else batches,
                         self.device)

    def final_weights(self) -> dict[str, Any]:
        """What ``final.pt`` holds: fp32 weights, step, data id and the resolved config."""
        return {"model": self.model.state_dict(), "step": self.step,
                "data_sha": data_sha(self.data.fingerprint),
                "trial": self.trial.model_dump_json()}

    # metrics -----------------------------------------------------------------------------------
    def metrics(self, w: _Window, val_loss: float | None,
                test_loss: float | None = None) -> dict[str, float]:
        tokens = self.tokens_seen
        tps = w.tokens / max(w.seconds, 1e-9)
        m: dict[str, float] = {
            "train/loss": sum(w.losses) / len(w.losses),
            "tokens": float(tokens),
            "flops": self.flops_per_token * tokens,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": sum(w.grad_norms) / len(w.grad_norms),
            "perf/tokens_per_s": tps,
        }
        if val_loss is not None:
            m["val/loss"] = val_loss
        if test_loss is not None:
            m["test/loss"] = test_loss
        rms = getattr(self.optimizer, "last_update_rms", None)
        if rms is not None:
            m["muon/update_rms"] = float(rms)
        peak = device_peak_flops(self.device)
        if peak:
            m["perf/mfu"] = self.flops_per_token * tps / peak
        m.update(self._attention_metrics(w))
        m.update(self._moe_metrics(w))
        return m

    def _attention_metrics(self, w: _Window) -> dict[str, float]:
        assert w.max_logits is not None
        per_layer = w.max_logits.amax(dim=1)  # (L,)
        m = {"attn/max_logit": float(per_layer.max())}
        m.update({f"attn/max_logit/L{i}": float(v) for i, v in enumerate(per_layer)})
        if w.clipped is not None:
            m["attn/heads_clipped"] = float(w.clipped.sum())
            m.update({f"attn/heads_clipped/L{i}": float(v) for i, v in enumerate(w.clipped)})
        rml = self.run_max_logits
        self.run_max_logits = w.max_logits if rml is None else torch.maximum(rml, w.max_logits)
        return m

    def _moe_metrics(self, w: _Window) -> dict[str, float]:
        assert w.loads is not None
        if w.loads.numel() == 0:
            return {}
        first = self.trial.model.first_k_dense
        imbalance = load_imbalance(w.loads)  # (L_moe,)
        dead = (w.loads == 0).sum(dim=1)
        biases = [b.e_score_bias for b in self.moe_layers()]
        m = {"moe/imbalance": float(imbalance.mean()), "moe/dead_experts": float(dead.sum()),
             "moe/imbalance_peak": w.peak_imbalance}
        for j, (imb, d, b) in enumerate(zip(imbalance, dead, biases, strict=True)):
            m[f"moe/imbalance/L{first + j}"] = float(imb)
            m[f"moe/dead_experts/L{first + j}"] = float(d)
            m[f"moe/bias_range/L{first + j}"] = float(b.max() - b.min())
        return m

    def routing_metrics(self, last: dict[str, float]) -> dict[str, float]:
        """``routing/*`` health of the run so far (:mod:`harness.routing`), ``last`` the row
        being logged; {} for a dense model."""
        travel = self.trial.model.moe.bias_travel(self.step)
        health = routing_health([*self.rows, (self.step, last)], travel)
        return {} if health is None else health.metrics()

    def moe_layers(self) -> list[Any]:
        return [blk.ffn for blk in self.model.blocks[self.trial.model.first_k_dense :]]

    def logit_table(self) -> str:
        """CSV of the per-head max attention logit over the whole run."""
        lines = ["layer,head,max_logit"]
        if self.run_max_logits is not None:
            for (i, h), v in zip(
                torch.cartesian_prod(
                    torch.arange(self.run_max_logits.shape[0]),
                    torch.arange(self.run_max_logits.shape[1]),
                ).tolist(),
                self.run_max_logits.flatten().tolist(),
                strict=True,
            ):
                lines.append(f"{i},{h},{v:.6g}")
        return "\n".join(lines) + "\n"


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


def _resume(trainer: Trainer, ckpt_dir: Path) -> None:
    """Load the newest checkpoint that reads back whole (damaged ones are set aside)."""
    remove_temps(ckpt_dir / CKPT, older_than=STALE_TEMP_S)
    found = load_latest([ckpt_dir / CKPT, ckpt_dir / PREV], Trainer.STATE_KEYS,
                        map_location=trainer.device)
    if found is not None:
        path, state = found
        trainer.load(state, path)
        log.info("trial %s resumed at step %d from %s", trainer.trial.hash, trainer.step,
                 path.name)


def _start_from_prefix(trainer: Trainer, share: Share, prefixes: PrefixStore) -> None:
    """A trial with no checkpoint of its own starts from the latest prefix checkpoint of its
    lineage at or before its cooldown start (:mod:`harness.prefix`); none: from step 0."""
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
        return


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
) -> TrialResult:
    """Train one trial to its token budget, logging to ``tracker``; resume from checkpoints.

    With ``share`` and ``prefixes`` (:mod:`harness.prefix`), a trial with no checkpoint of its
    own starts from its lineage's prefix checkpoint and saves the ones ``share`` names.
    ``stop_after`` (steps) stops early without finishing the run, as a crash would; tests use it.
    """
    tc = trial.train
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    data = load_data(trial.data, cache_dir)
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        done = read_record(ckpt_dir)
        if done is not None:
            same_data(done.params.get("data_sha"), data, ckpt_dir / RESULT)
            log.info("trial %s already finished; replaying its record", trial.hash)
            return _finished(tracker, done)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    trainer = Trainer(trial, data, device)
    if ckpt_dir is not None:
        _resume(trainer, ckpt_dir)
    if trainer.step == 0 and share is not None and prefixes is not None:
        _start_from_prefix(trainer, share, prefixes)
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
            trainer.window = _Window()
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
