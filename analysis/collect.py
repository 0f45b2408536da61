"""Collect sweeps from MLflow into tidy pandas frames, cached as parquet.

``runs``: one row per trial (sweep, run id, name, hash, status, arm, every param under its dotted
key, parameter counts recomputed from the config, sparsity, tokens, FLOPs, final losses).
``curves``: one row per logged step (run id, step, tokens, FLOPs, train/val loss, max attention
logit, heads clipped, load imbalance, per-layer max logits).
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import TrialConfig
from harness.tracking import find_runs, mlflow_client

log = logging.getLogger(__name__)

CURVE_KEYS = (
    "train/loss", "val/loss", "tokens", "flops", "lr", "grad_norm", "attn/max_logit",
    "attn/heads_clipped", "moe/imbalance", "moe/dead_experts", "muon/update_rms",
    "perf/tokens_per_s",
)
DEFAULT_CACHE = Path("results") / "cache"


@dataclass(frozen=True)
class Collected:
    """The runs and curves of one sweep."""

    runs: pd.DataFrame
    curves: pd.DataFrame


def parse_param(text: str) -> Any:
    """MLflow params are strings; turn ``64``, ``0.02``, ``None``, ``[0.9, 0.95]`` back."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError):
            continue
    return text


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1} -> {"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def trial_of(params: dict[str, str]) -> TrialConfig | None:
    """The TrialConfig a run logged, or None when its params do not validate (older schema)."""
    keep = {k: parse_param(v) for k, v in params.items() if k.split(".")[0] in
            ("model", "optim", "data", "train")}
    try:
        return TrialConfig.model_validate(unflatten(keep))
    except ValueError:
        return None


def run_row(run: Any, sweep: str) -> dict[str, Any]:
    """One tidy row for a child run."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    row: dict[str, Any] = {
        "sweep": sweep,
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "hash": tags.get("trial_hash"),
        "status": tags.get("status", "unknown"),
        "arm": tags.get("arm"),
        "tokens": metrics.get("tokens"),
        "flops": metrics.get("flops"),
        "final_train_loss": metrics.get("train/loss"),
        "final_val_loss": metrics.get("val/loss"),
    }
    trial = trial_of(params)
    if trial is not None:
        pc = trial.model.param_counts()
        row.update(
            total_params=pc.total,
            active_params=pc.active,
            active_non_embedding=pc.active_non_embedding,
            sparsity=trial.model.sparsity,
            arm=row["arm"] or trial.optim.arm,
        )
    row.update({k: parse_param(v) for k, v in params.items() if k != "data.fingerprint"})
    return row


def curve_rows(client: Any, run_id: str) -> pd.DataFrame:
    """Every logged metric of a run, one row per step (wide)."""
    run = client.get_run(run_id)
    keys = [k for k in run.data.metrics if k in CURVE_KEYS or k.startswith("attn/max_logit/")]
    series = {
        key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in keys
    }
    frame = pd.DataFrame(series).sort_index()
    frame.index.name = "step"
    frame = frame.reset_index()
    frame.insert(0, "run_id", run_id)
    return frame


def collect(
    sweep: str,
    uri: str | None = None,
    *,
    refresh: bool = False,
    cache_dir: Path = DEFAULT_CACHE,
) -> Collected:
    """Runs and curves of ``sweep``: from the parquet cache, or from MLflow (and cache them)."""
    runs_path = cache_dir / f"{sweep}.runs.parquet"
    curves_path = cache_dir / f"{sweep}.curves.parquet"
    if not refresh and runs_path.exists() and curves_path.exists():
        return Collected(pd.read_parquet(runs_path), pd.read_parquet(curves_path))
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        raise LookupError(f"no MLflow experiment named '{sweep}'")
    children = [
        r for r in find_runs(client, exp.experiment_id, "")
        if r.data.tags.get("kind") != "sweep"
    ]
    log.info("collecting %d runs of %s", len(children), sweep)
    runs = pd.DataFrame([run_row(r, sweep) for r in children])
    frames = [curve_rows(client, r.info.run_id) for r in children]
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    runs = _tidy(runs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(runs_path)
    curves.to_parquet(curves_path)
    return Collected(runs, curves)


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers-or-null columns become float, other mixed columns text (parquet-safe, stable)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        values = out[col].dropna()
        if len(values) and all(isinstance(v, int | float) and not isinstance(v, bool)
                               for v in values):
            out[col] = pd.to_numeric(out[col], errors="coerce")
        else:
            out[col] = out[col].map(lambda v: None if v is None else str(v))
    return out


def sweep_names(uri: str | None = None) -> list[str]:
    """Experiments that hold a harness sweep (a parent run tagged ``kind=sweep``)."""
    client = mlflow_client(uri)
    return [
        e.name for e in client.search_experiments()
        if find_runs(client, e.experiment_id, "tags.kind = 'sweep'")
    ]
