"""``harness status`` and ``harness resume``: what MLflow knows about sweeps and trials."""

from __future__ import annotations

import json
import re
from typing import Any

from harness.config import ConfigError, SweepConfig
from harness.tracking import find_runs, mlflow_client


def _sweep_experiments(client: Any) -> list[tuple[Any, Any]]:
    """(experiment, parent run) for every experiment with a sweep parent run."""
    out = []
    for exp in client.search_experiments():
        parents = find_runs(client, exp.experiment_id, "tags.kind = 'sweep'")
        if parents:
            out.append((exp, parents[0]))
    return out


def _children(client: Any, exp: Any, parent: Any) -> list[Any]:
    return find_runs(client, exp.experiment_id, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def status_text(name: str | None = None) -> str:
    """A table of sweeps, or of one sweep's trials."""
    client = mlflow_client()
    sweeps = _sweep_experiments(client)
    if name is None:
        if not sweeps:
            return "no sweeps yet: harness submit sweeps/smoke.yaml"
        lines = [f"{'sweep':<20} {'trials':>6} {'finished':>8} {'diverged':>8} {'failed':>6} "
                 f"{'running':>7}  status"]
        for exp, parent in sweeps:
            states = [r.data.tags.get("status", "?") for r in _children(client, exp, parent)]
            lines.append(
                f"{exp.name:<20} {len(states):>6} {states.count('finished'):>8} "
                f"{states.count('diverged'):>8} {states.count('failed'):>6} "
                f"{states.count('running'):>7}  {parent.data.tags.get('status', '?')}"
            )
        return "\n".join(lines)
    match = [(e, p) for e, p in sweeps if e.name == name]
    if not match:
        known = ", ".join(e.name for e, _ in sweeps) or "none"
        raise ConfigError(f"sweep '{name}' not found in MLflow (known: {known})")
    exp, parent = match[0]
    lines = [f"{'trial':<28} {'hash':<12} {'status':<11} {'tokens':>10} {'train':>7} {'val':>7}"]
    for r in sorted(_children(client, exp, parent), key=lambda r: _natural(r.info.run_name)):
        m = r.data.metrics
        train, val = (f"{m[k]:.4f}" if k in m else "-" for k in ("train/loss", "val/loss"))
        lines.append(
            f"{r.info.run_name or '?':<28} {r.data.tags.get('trial_hash', '?'):<12} "
            f"{r.data.tags.get('status', '?'):<11} {int(m.get('tokens', 0)):>10} "
            f"{train:>7} {val:>7}"
        )
    return "\n".join(lines)


def _natural(name: str | None) -> list[Any]:
    """Sort key that puts E4 before E16."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name or "")]


def stored_sweep(name: str) -> SweepConfig:
    """The resolved sweep a parent run was submitted with (its ``sweep.json`` artifact)."""
    client = mlflow_client()
    for exp, parent in _sweep_experiments(client):
        if exp.name == name:
            import mlflow.artifacts

            text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/sweep.json")
            return SweepConfig.model_validate(json.loads(text))
    raise ConfigError(f"sweep '{name}' not found in MLflow: submit it first")
