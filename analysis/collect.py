"""Collect sweeps from MLflow into tidy pandas frames, cached as parquet.

``runs``: one row per trial (sweep, run id, name, hash, status, arm, tokens, FLOPs, final losses,
and every param the trial logged under its own key: the config's dotted keys and the derived
values of :func:`harness.store.trial_params`, read back as logged, never recomputed here).
``runs`` also holds the routing health a trial logged at its last step (``routing/*``,
:mod:`harness.routing`). ``curves``: one row per logged step (run id, step, tokens, FLOPs,
train/val loss, max attention logit, heads clipped, load imbalance and dead experts, per-layer
max logits and bias ranges).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.routing import PREFIX as ROUTING_PREFIX
from harness.store import DERIVED, Store, decode_param

log = logging.getLogger(__name__)

CURVE_KEYS = (
    "train/loss", "val/loss", "tokens", "flops", "lr", "grad_norm", "attn/max_logit",
    "attn/heads_clipped", "moe/imbalance", "moe/dead_experts", "muon/update_rms",
    "perf/tokens_per_s", "test/loss", "rescore/val/loss", "rescore/test/loss",
    "moe/imbalance_peak",
)
CURVE_PREFIXES = ("attn/max_logit/", "moe/bias_range/")
"""Per-layer curves, kept whole."""
DEFAULT_CACHE = Path("results") / "cache"


@dataclass(frozen=True)
class Collected:
    """The runs and curves of one sweep."""

    runs: pd.DataFrame
    curves: pd.DataFrame


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
        "final_test_loss": metrics.get("test/loss"),
    }
    row.update({k: decode_param(v) for k, v in params.items() if k != "data.fingerprint"})
    row.update({k: v for k, v in metrics.items() if k.startswith(ROUTING_PREFIX)})
    return row


def curve_rows(store: Store, run: Any) -> pd.DataFrame:
    """Every logged curve metric of a run, one row per step (wide)."""
    run_id = run.info.run_id
    keys = [k for k in run.data.metrics if k in CURVE_KEYS or k.startswith(CURVE_PREFIXES)]
    frame = pd.DataFrame(store.history(run_id, keys)).sort_index()
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
    store = Store(uri)
    children = store.trial_runs(sweep)
    log.info("collecting %d runs of %s", len(children), sweep)
    old = [r.info.run_name for r in children if any(k not in r.data.params for k in DERIVED)]
    if old:
        log.warning("%s: %d runs lack the derived params (an older harness logged them, e.g. %s) "
                    "and are not fitted; `harness repair %s` adds them", sweep, len(old), old[0],
                    sweep)
    runs = pd.DataFrame([run_row(r, sweep) for r in children])
    frames = [curve_rows(store, r) for r in children]
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
