"""Run names that read: a child run is named by what varies in its sweep (``E64-k8-muon-s0``)."""

from __future__ import annotations

from typing import Any

from harness.config import SweepConfig, TrialConfig, flatten

# Short labels for the axes K2's ablations vary; any other axis shows as ``leaf=value``.
_SHORT = {
    "model.moe.n_routed_experts": "E",
    "model.moe.top_k": "k",
    "model.moe.n_shared": "sh",
    "model.moe.expert_ffn_dim": "F",
    "model.dense_ffn_dim": "Fd",
    "model.moe.n_groups": "G",
    "model.moe.topk_groups": "g",
    "model.attention.n_heads": "h",
    "model.first_k_dense": "dense",
    "model.n_layers": "L",
    "model.d_model": "d",
    "optim.lr": "lr",
    "optim.qk_clip_tau": "tau",
    "train.tokens": "T",
    "train.seed": "s",
}


def _fmt(value: Any) -> str:
    """Compact value: ``64``, ``2M``, ``3e-3``, ``0.02``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and value >= 10_000:
        value = int(value)
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:g}M" if value >= 1_000_000 else f"{value / 1e3:g}k"
    if isinstance(value, float) and 0 < abs(value) < 0.01:
        return f"{value:.0e}".replace("e-0", "e-")
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_name(trial: TrialConfig, sweep: SweepConfig) -> str:
    """Name from the sweep's varying axes; the optimizer arm always shows, the seed last."""
    flat = flatten(trial.model_dump(mode="json"))
    parts = []
    for key in sweep.axes:
        if key in ("optim.name", "train.seed"):
            continue
        label = _SHORT.get(key)
        value = _fmt(flat[key]) if flat.get(key) is not None else "off"
        parts.append(f"{label}{value}" if label else f"{key.rsplit('.', 1)[-1]}={value}")
    parts.append(trial.optim.arm)
    parts.append(f"s{trial.train.seed}")
    return "-".join(parts)
