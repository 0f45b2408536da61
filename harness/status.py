"""``harness status``, ``harness resume`` and ``harness repair``: what MLflow knows about sweeps
and trials (read through :class:`harness.store.Store`)."""

from __future__ import annotations

import logging
import re
from typing import Any

from harness.config import NotFoundError, SweepConfig
from harness.store import DERIVED, Store, run_status, trial_params
from harness.tracking import TrialStatus

log = logging.getLogger(__name__)


def status_text(name: str | None = None) -> str:
    """A table of sweeps, or of one sweep's trials."""
    store = Store()
    sweeps = store.sweeps()
    if name is None:
        if not sweeps:
            return "no sweeps yet: harness submit sweeps/smoke.yaml"
        lines = [f"{'sweep':<20} {'trials':>6} {'finished':>8} {'diverged':>8} {'failed':>6} "
                 f"{'running':>7}  status"]
        for sweep_name, parent in sweeps:
            states = [run_status(r) for r in store.trial_runs(sweep_name)]
            lines.append(
                f"{sweep_name:<20} {len(states):>6} {states.count(TrialStatus.FINISHED):>8} "
                f"{states.count(TrialStatus.DIVERGED):>8} {states.count(TrialStatus.FAILED):>6} "
                f"{states.count(TrialStatus.RUNNING):>7}  {parent.data.tags.get('status', '?')}"
            )
        return "\n".join(lines)
    if name not in {n for n, _ in sweeps}:
        known = ", ".join(n for n, _ in sweeps) or "none"
        raise NotFoundError(f"sweep '{name}' not found in MLflow (known: {known})")
    lines = [f"{'trial':<28} {'hash':<12} {'status':<11} {'tokens':>10} {'train':>7} {'val':>7}"]
    for r in sorted(store.trial_runs(name), key=lambda r: _natural(r.info.run_name)):
        m = r.data.metrics
        train, val = (f"{m[k]:.4f}" if k in m else "-" for k in ("train/loss", "val/loss"))
        lines.append(
            f"{r.info.run_name or '?':<28} {r.data.tags.get('trial_hash', '?'):<12} "
            f"{run_status(r):<11} {int(m.get('tokens', 0)):>10} {train:>7} {val:>7}"
        )
    return "\n".join(lines)


def _natural(name: str | None) -> list[Any]:
    """Sort key that puts E4 before E16."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name or "")]


def stored_sweep(name: str) -> SweepConfig:
    """The resolved sweep a parent run was submitted with (its sweep record)."""
    return Store().stored_sweep(name)


def repair(name: str, uri: str | None = None) -> int:
    """Log the derived params (arm, sizes, data_sha) that finished runs of sweep ``name`` lack;
    return the number of runs repaired.

    Runs finished by harness versions that did not log them are left out of the analysis, which
    groups runs by these params. The corpus is loaded to fingerprint it (``data_sha``), once per
    distinct data config. Only missing keys are logged (MLflow params are write-once).
    """
    from harness.data import load_data

    store = Store(uri)
    if store.experiment_id(name) is None:
        raise NotFoundError(f"sweep '{name}' not found in MLflow")
    runs = store.finished(name)
    fingerprints: dict[str, dict[str, Any]] = {}
    repaired = 0
    for trial in store.stored_sweep(name).expand():
        run = runs.get(trial.hash)
        if run is None or all(k in run.data.params for k in (*DERIVED, "data_sha")):
            continue
        key = trial.data.model_dump_json()
        if key not in fingerprints:
            fingerprints[key] = load_data(trial.data).fingerprint
        store.log_missing_params(run, trial_params(trial, fingerprints[key]))
        repaired += 1
    log.info("%s: logged the missing derived params of %d finished runs", name, repaired)
    return repaired
