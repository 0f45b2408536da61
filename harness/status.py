"""``harness status``, ``harness resume`` and ``harness repair``: what MLflow knows about sweeps
and trials (read through :class:`harness.store.Store`)."""

from __future__ import annotations

import logging
import re
from typing import Any

from harness.config import NotFoundError, SweepConfig
from harness.locks import is_held, sweep_lock_path
from harness.naming import run_name
from harness.preflight import default_storage
from harness.store import DERIVED, Store, run_status, store_exists, trial_params
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
    return trials_table(store, name)


def trials_table(store: Store, name: str) -> str:
    """Every trial of the sweep with its state: those of the stored sweep (``pending`` when
    no run exists yet), then runs the store has that the sweep no longer expands to. A trial
    still tagged ``running`` when no submit or resume holds the sweep's lock shows ``stale``:
    its driver is gone, and ``harness resume`` continues it."""
    driven = is_held(sweep_lock_path(default_storage(), name))
    runs = {r.data.tags.get("trial_hash"): r for r in store.trial_runs(name)}
    sweep = _record(store, name)
    rows: list[tuple[str, str, Any]] = []
    for trial in sweep.expand() if sweep is not None else []:
        run = runs.pop(trial.hash, None)
        shown = run.info.run_name if run is not None and run.info.run_name else None
        rows.append((shown or run_name(trial, sweep), trial.hash, run))
    rows += [(r.info.run_name or "?", h or "?", r) for h, r in runs.items()]
    lines = [f"{'trial':<28} {'hash':<12} {'status':<11} {'tokens':>10} {'train':>7} {'val':>7}"]
    for trial_name, trial_hash, r in sorted(rows, key=lambda row: _natural(row[0])):
        m = r.data.metrics if r is not None else {}
        train, val = (f"{m[k]:.4f}" if k in m else "-" for k in ("train/loss", "val/loss"))
        state = run_status(r) if r is not None else TrialStatus.PENDING.value
        if state == TrialStatus.RUNNING and not driven:
            state = "stale"
        lines.append(f"{trial_name:<28} {trial_hash:<12} {state:<11} "
                     f"{int(m.get('tokens', 0)):>10} {train:>7} {val:>7}")
    if any(" stale " in line for line in lines):
        lines.append(f"stale: tagged running, but no driver is running the sweep: "
                     f"harness resume {name}")
    return "\n".join(lines)


def _record(store: Store, name: str) -> SweepConfig | None:
    """The stored sweep, or None when it has none or it no longer validates (older schema)."""
    text = store.read_sweep_record(name)
    try:
        return SweepConfig.model_validate_json(text) if text is not None else None
    except ValueError as e:
        log.warning("%s: the stored sweep does not validate (%s); listing its runs only",
                    name, str(e).splitlines()[0])
        return None


def known_states(sweep: SweepConfig) -> dict[str, str]:
    """The stored status of each trial of ``sweep`` that has a run, by hash, for ``--dry-run``;
    empty when there is no store yet (nothing is created to find out) or it cannot be read."""
    if not store_exists():
        return {}
    try:
        store = Store()
        if store.experiment_id(sweep.name) is None:
            return {}
        return {r.data.tags["trial_hash"]: run_status(r) for r in store.trial_runs(sweep.name)
                if "trial_hash" in r.data.tags}
    except Exception as e:  # the MLflow client raises many types for an unreadable store
        log.warning("could not read the trials' states from MLflow: %s", e)
        return {}


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
