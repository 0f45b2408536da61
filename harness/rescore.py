"""``harness rescore NAME``: every finished trial's final weights evaluated on the validation and
test splits the current harness gives its data config, logged to the trial's own MLflow run.

What is logged, per run, in one batch at the run's last step (the step of its ``final.pt``):

- metrics ``rescore/val/loss`` and ``rescore/test/loss`` (nats per token): new keys, never
  ``val/loss`` or ``test/loss``, which stay the training-time evaluations on the split the trial
  trained with (MLflow would otherwise hold two values at one step);
- params ``rescore.data_sha``, ``rescore.val_sha``, ``rescore.test_sha``: the data id and the
  held-out splits the numbers are about.

No run is created and no step is added. Resumable and idempotent: a run is logged as soon as it is
scored; a run that already has ``rescore/test/loss`` for the same data id is skipped, and one
rescored on other data is reported and left as is (MLflow params are write-once: move to a new
sweep name to score again). A trial whose folder ``<storage>/checkpoints/<trial hash>/`` has no
``final.pt`` (finished by an older harness, which deleted its weights) is reported as not
rescorable; nothing raises for one trial.

On the trial's own device and split the rescored numbers equal its final ``val/loss`` and
``test/loss``: both come from :func:`harness.evaluate.mean_loss` on
:func:`harness.evaluate.eval_sets`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checkpoint import DamagedFileError, UnsafeCheckpointError, read_checkpoint
from harness.config import NotFoundError, TrialConfig
from harness.data import TokenData, load_data, split_ids
from harness.env import pick_device
from harness.evaluate import eval_sets, mean_loss
from harness.model.transformer import Transformer
from harness.preflight import default_storage
from harness.record import FINAL
from harness.store import Store, data_sha, run_status, store_exists
from harness.tracking import TrialStatus

log = logging.getLogger(__name__)

PREFIX = "rescore/"
"""Metric keys of a rescore: ``rescore/val/loss``, ``rescore/test/loss``."""
DATA_PARAM = "rescore.data_sha"
"""Param naming the data id a run's rescore is about (with ``rescore.val_sha``, ``.test_sha``)."""
FINAL_KEYS = ("model", "step", "trial")
NO_WEIGHTS = "not rescorable (no final weights: finished by an older harness)"


@dataclass(frozen=True)
class Outcome:
    """What rescoring did to one finished trial."""

    name: str  # run name
    trial_hash: str
    state: str  # "rescored", "already rescored", or why it was not
    val_loss: float | None = None
    test_loss: float | None = None
    note: str = ""

    @property
    def kind(self) -> str:
        """``rescored``, ``already rescored`` or ``not rescorable``."""
        if self.state == "rescored":
            return self.state
        return "already rescored" if self.state.startswith("already") else "not rescorable"

    def line(self) -> str:
        losses = ""
        if self.val_loss is not None and self.test_loss is not None:
            losses = f"  val {self.val_loss:.4f}  test {self.test_loss:.4f}"
        return f"{self.name:<28} {self.trial_hash:<12} {self.state}{losses}{self.note}"


def rescore_sweep(
    name: str,
    uri: str | None = None,
    storage: Path | None = None,
    cache_dir: Path | None = None,
) -> list[Outcome]:
    """Rescore every finished trial of sweep ``name`` (see the module docstring)."""
    if not store_exists(uri):
        raise NotFoundError(f"sweep '{name}' not found: no MLflow store at {uri or 'mlflow.db'}")
    store = Store(uri)
    folder = (storage or default_storage()) / "checkpoints"
    runs = [r for r in store.trial_runs(name) if run_status(r) == TrialStatus.FINISHED.value]
    datas: dict[str, TokenData] = {}
    outcomes = []
    for run in sorted(runs, key=lambda r: str(r.info.run_name)):
        outcome = rescore_run(store, run, folder, datas, cache_dir)
        log.info("%s", outcome.line())
        outcomes.append(outcome)
    return outcomes


def rescore_run(
    store: Store, run: Any, folder: Path, datas: dict[str, TokenData],
    cache_dir: Path | None = None,
) -> Outcome:
    """Rescore one finished run; ``datas`` caches loaded corpora by data config."""
    name, trial_hash = str(run.info.run_name), run.data.tags.get("trial_hash", "?")
    path = folder / trial_hash / FINAL
    if not path.exists():
        return Outcome(name, trial_hash, NO_WEIGHTS)
    try:
        state = read_checkpoint(path, FINAL_KEYS, map_location="cpu")
    except (DamagedFileError, UnsafeCheckpointError) as e:
        return Outcome(name, trial_hash, f"not rescorable (final weights unreadable: {e})")
    trial = TrialConfig.model_validate(json.loads(state["trial"]))
    key = trial.data.model_dump_json()
    if key not in datas:
        datas[key] = load_data(trial.data, cache_dir)
    data = datas[key]
    now = data_sha(data.fingerprint)
    done = run.data.params.get(DATA_PARAM)
    if f"{PREFIX}test/loss" in run.data.metrics and done is not None:
        why = "" if done == now else f" on data {done}, now {now}: left as is"
        return Outcome(name, trial_hash, f"already rescored{why}")
    val, test = final_losses(trial, state, data)
    params = {DATA_PARAM: now, **{f"rescore.{k}": v for k, v in split_ids(data.fingerprint)
                                  .items()}}
    store.log_at_step(run.info.run_id, int(state["step"]),
                      {f"{PREFIX}val/loss": val, f"{PREFIX}test/loss": test}, params)
    trained_on = state.get("data_sha")
    note = "" if trained_on == now else f"  (trained on data {trained_on}, scored on {now})"
    return Outcome(name, trial_hash, "rescored", val, test, note)


def final_losses(trial: TrialConfig, state: dict[str, Any], data: TokenData) -> tuple[float, float]:
    """(validation, test) loss of the weights in ``state`` on ``data``, as the trainer computes
    them at its last step."""
    device = pick_device(trial.train.device)
    model = Transformer(trial.model)
    model.load_state_dict(state["model"])
    model.to(device)
    val, test = eval_sets(trial, data)
    return mean_loss(model, model, val, device), mean_loss(model, model, test, device)
