"""Reading config files: safe YAML, profiles applied, every key validated, one-line errors.

``load_sweep(path, profile)`` reads a sweep YAML safely, applies a named profile, validates every
key and every expanded trial, and raises :class:`ConfigError` with one line that names the YAML key
and the rule. ``load_trial(path)`` does the same for one ``TrialConfig`` (``harness train``).
Nothing is launched or written while loading, and nothing here looks at the machine.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.config.errors import ConfigError
from harness.config.sweep import SweepConfig, one_line
from harness.config.trial import TrialConfig


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e6`` and ``2.0e6`` as floats (YAML 1.2 style)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d[\d_]*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping with the safe loader; any failure is a one-line ConfigError."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}{where}: invalid YAML: {problem}") from None
    except Exception as e:  # a tag the constructor rejects: !!int abc, !!timestamp {a: 1}
        problem = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{p}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    _check_numbers(data, p)
    return data


MAX_INT = 2**63
"""Integers in a config are int64 (torch, SQLite, MLflow); larger ones overflow float math."""


def _check_numbers(data: dict[str, Any], path: Path) -> None:
    """Reject integers outside int64 anywhere in the YAML, naming the dotted key."""
    stack: list[tuple[str, Any]] = [("", data)]
    seen: set[int] = set()  # YAML anchors can make a structure refer to itself
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen:
                continue
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in items)
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= MAX_INT:
            raise ConfigError(f"{path}: {key}: {str(node)[:12]}... is out of range (|x| < 2^63)")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_sweep(path: str | Path, profile: str | None = None) -> SweepConfig:
    """Read, apply ``profile`` and validate a sweep YAML (every trial is expanded, once)."""
    raw = read_yaml(path)
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if not isinstance(profiles, dict) or profile not in profiles:
            known = ", ".join(profiles) if isinstance(profiles, dict) and profiles else "none"
            raise ConfigError(f"profiles.{profile}: unknown profile (known: {known})")
        over = profiles[profile]
        if not isinstance(over, dict):
            raise ConfigError(f"profiles.{profile}: must be a mapping")
        bad = set(over) - {"base", "grid", "zip", "seeds", "resources", "max_concurrent",
                           "max_failures", "description", "analysis"}
        if bad:
            raise ConfigError(f"profiles.{profile}.{sorted(bad)[0]}: unknown key")
        raw = deep_merge(raw, over)
        raw["profile"] = profile
        # Its own MLflow experiment: a profile's runs never mix with the default's.
        raw["name"] = f"{raw.get('name')}-{profile}"
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {one_line(e)}") from None
    try:
        sweep.expand()  # validates every trial; the list is kept for the caller
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return sweep


def load_trial(path: str | Path) -> TrialConfig:
    """Read one TrialConfig YAML (``harness train``)."""
    raw = read_yaml(path)
    try:
        trial = TrialConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {one_line(e)}") from None
    return trial
