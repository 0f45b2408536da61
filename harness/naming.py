"""Run names that read: a child run is named by what varies in its sweep (``E64-k8-muon-s0``).

Names are unique within a sweep: each axis is written in the compact form (``2e-3``, ``1.5M``)
unless that would give two of the sweep's values of the axis the same text, and then with the
fewest extra significant digits that tell them apart (``1.5e-3`` next to ``2e-3``; ``1.500001M``
next to ``1.5M``). Names of sweeps whose compact names were already distinct do not change.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from harness.config import SweepConfig, TrialConfig

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

MAX_EXTRA_DIGITS = 17
"""Past this many extra significant digits (a float's 17 tell any two apart) values are written
exactly: ``str`` of an int, ``repr`` of a float."""

Extra = int | None
"""Significant digits added to the compact form of a value; None = exact."""


NULL_MEANS = {"model.moe.bias_update_rate": "auto", "optim.router_lr": "auto",
              "optim.adamw_lr": "auto", "optim.router_weight_decay": "auto"}
"""How a run name shows a null that means a derived default rather than off."""


def _fmt(value: Any, extra: Extra = 0) -> str:
    """Compact value: ``64``, ``2M``, ``3e-3``, ``0.02``; with ``extra`` more significant
    digits than that (``1.5e-3``, ``1.500001M``), or exact for ``extra=None``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "off"
    if not isinstance(value, int | float):
        return str(value)
    if extra is None:
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, float) and value.is_integer() and value >= 10_000:
        value = int(value)
    if isinstance(value, int) and value >= 10_000:
        scaled, unit = (value / 1e6, "M") if value >= 1_000_000 else (value / 1e3, "k")
        return f"{scaled:.{6 + extra}g}{unit}"
    if isinstance(value, float) and 0 < abs(value) < 0.01:
        return _exponent(value, extra)
    return f"{value:.{6 + extra}g}" if isinstance(value, float) else str(value)


def _exponent(value: float, extra: int) -> str:
    """``3e-3`` (one significant digit), ``1.5e-3`` with ``extra`` digits, trailing zeros cut."""
    mantissa, exp = f"{value:.{extra}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def _value_at(dump: dict[str, Any], key: str) -> Any:
    """``dump["a"]["b"]`` for ``key = "a.b"`` (a mapping-valued axis gives the mapping)."""
    node: Any = dump
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _extra_digits(values: list[Any]) -> Extra:
    """Fewest extra digits (0 = the compact form) that give distinct ``values`` distinct text."""
    distinct = {json.dumps(v, sort_keys=True): v for v in values}.values()
    for extra in range(MAX_EXTRA_DIGITS + 1):
        if len({_fmt(v, extra) for v in distinct}) == len(distinct):
            return extra
    return None


_DIGITS: dict[int, tuple[weakref.ref[SweepConfig], dict[str, Extra]]] = {}


def _named_axes(sweep: SweepConfig) -> list[str]:
    return [k for k in sweep.axes if k not in ("optim.name", "train.seed")]


def axis_digits(sweep: SweepConfig) -> dict[str, Extra]:
    """Extra digits each named axis needs so that its values in ``sweep`` read apart; worked out
    once per sweep object (a run is named many times while its sweep runs)."""
    hit = _DIGITS.get(id(sweep))
    if hit is not None and hit[0]() is sweep:
        return hit[1]
    axes = _named_axes(sweep)
    dumps = [t.model_dump(mode="json") for t in sweep.expand()] if axes else []
    digits = {key: _extra_digits([_value_at(d, key) for d in dumps]) for key in axes}
    key = id(sweep)
    _DIGITS[key] = (weakref.ref(sweep, lambda _: _DIGITS.pop(key, None)), digits)
    return digits


def human(x: float) -> str:
    """``35400 -> 35.4k``, ``1.2e9 -> 1.2B``: three significant digits and a unit."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def run_name(trial: TrialConfig, sweep: SweepConfig) -> str:
    """Name from the sweep's varying axes; the optimizer arm always shows, the seed last."""
    dump = trial.model_dump(mode="json")
    digits = axis_digits(sweep)
    parts = []
    for key in _named_axes(sweep):
        label = _SHORT.get(key)
        raw = _value_at(dump, key)
        value = NULL_MEANS.get(key, "off") if raw is None else _fmt(raw, digits.get(key, 0))
        parts.append(f"{label}{value}" if label else f"{key.rsplit('.', 1)[-1]}={value}")
    parts.append(trial.optim.arm)
    parts.append(f"s{trial.train.seed}")
    return "-".join(parts)
