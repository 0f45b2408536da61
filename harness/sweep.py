"""Sweep files: one YAML = one experiment (base trial, grid, zip, seeds, resources, profiles).

``load_sweep(path, profile)`` reads a YAML safely, applies a named profile, validates every key and
every expanded trial, and raises :class:`ConfigError` with one line that names the YAML key and the
rule. Nothing is launched or written while loading.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config import Frozen, TrialConfig
from harness.memory import check_memory


class ConfigError(ValueError):
    """Bad user input: a one-line message naming the key and the rule (CLI exit status 2)."""

    def __str__(self) -> str:
        # keys and values from the YAML may hold line breaks or control characters: escape them
        msg = super().__str__()
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


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
MAX_TRIALS = 10_000
"""Most trials one sweep may expand to (a typo in a grid should not hang the expansion)."""


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


def one_line(err: ValidationError, prefix: str = "") -> str:
    """First pydantic error as ``key.path: rule`` (plus how many more there were)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(x) for x in (prefix, *first["loc"]) if x != "")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc or '(top level)'}: {msg}{more}"


def set_dotted(d: dict[str, Any], path: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``path = "a.b"``, creating mappings on the way."""
    *parents, leaf = path.split(".")
    node = d
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: '{key}' is not a mapping")
        node = child
    node[leaf] = value


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Resources(Frozen):
    """Per-trial resources for Ray; GPU fractions pack several trials on one GPU."""

    cpu: float = Field(1.0, gt=0, description="CPU cores per trial")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial (fractions allowed)")


class AnalysisSpec(Frozen):
    """How ``make plots`` reads this sweep: which column is the arm, against which baseline."""

    kind: Literal["curves", "sparsity", "multiplier", "logits"] = Field(
        "curves",
        description="curves: loss vs FLOPs per arm; sparsity: K2 sparsity law; multiplier: "
        "compute multiplier of each arm over the baseline; logits: max-logit study",
    )
    arm: str = Field("arm", description="runs-table column that names an arm (dotted key, "
                     "'arm' = optimizer arm, 'sparsity')")
    baseline: str | float | int | None = Field(None, description="arm value others compare to")
    size: str | None = Field(None, description="column that distinguishes model sizes")
    best_of: str | None = Field(
        None, description="axis tuned per (arm, size): keep the best final loss over it"
    )


_AXIS = re.compile(r"^(model|optim|data|train)(\.[a-z_][a-z0-9_]*)+$")


class SweepConfig(Frozen):
    """One experiment: a base trial and the axes that vary around it."""

    name: str = Field(description="MLflow experiment name and resume handle")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict, description="a full TrialConfig")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="cartesian axes")
    zip: dict[str, list[Any]] = Field(default_factory=dict, description="axes that move together")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, gt=0, description="trials running at once")
    max_failures: int = Field(3, ge=0, description="restarts of a crashed trial")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    analysis: AnalysisSpec = AnalysisSpec()
    profile: str | None = Field(None, description="the profile applied (set by load_sweep)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("must be 1-64 letters, digits, '_', '.', '-' (no spaces)")
        return v

    @field_validator("grid", "zip")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not _AXIS.match(key):
                raise ValueError(f"{key}: axis must be a dotted path under model/optim/data/train")
            if not values:
                raise ValueError(f"{key}: axis has no values")
        return v

    @model_validator(mode="after")
    def _check(self) -> Self:
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            sizes = ", ".join(f"{k}={len(v)}" for k, v in self.zip.items())
            raise ValueError(f"zip axes must have equal lengths, got {sizes}")
        both = set(self.grid) & set(self.zip)
        if both:
            raise ValueError(f"{sorted(both)[0]}: axis is in both grid and zip")
        if "train.seed" in self.grid or "train.seed" in self.zip:
            raise ValueError("train.seed: use the top-level 'seeds' list instead")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: values must be distinct")
        n = math.prod(len(v) for v in self.grid.values()) * len(self.seeds)
        n *= len(next(iter(self.zip.values()))) if self.zip else 1
        if n > MAX_TRIALS:
            raise ValueError(f"grid x zip x seeds gives {n} trials; at most {MAX_TRIALS}")
        return self

    @property
    def axes(self) -> list[str]:
        """Dotted keys that vary across trials (seed last when several)."""
        keys = [*self.grid, *self.zip]
        return [*keys, "train.seed"] if len(self.seeds) > 1 else keys

    def points(self) -> list[dict[str, Any]]:
        """Every trial's overrides ``{dotted key: value}``, in a stable order."""
        grid_rows = [
            dict(zip(self.grid, combo, strict=True))
            for combo in itertools.product(*self.grid.values())
        ]
        n_zip = len(next(iter(self.zip.values()))) if self.zip else 1
        zip_rows = [{k: v[i] for k, v in self.zip.items()} for i in range(n_zip)]
        return [
            {**g, **z, "train.seed": seed}
            for g in grid_rows
            for z in zip_rows
            for seed in self.seeds
        ]

    def expand(self) -> list[TrialConfig]:
        """Validated trials of the sweep; a bad point raises ConfigError naming its key, and so
        does a trial whose memory estimate does not fit this machine (harness.memory)."""
        trials, seen = [], set()
        for point in self.points():
            raw = copy.deepcopy(self.base)
            for key, value in point.items():
                set_dotted(raw, key, value)
            where = ", ".join(f"{k}={v}" for k, v in point.items() if k in self.axes)
            try:
                trial = TrialConfig.model_validate(raw)
            except ValidationError as e:
                raise ConfigError(f"{one_line(e, 'base')} (trial {where or 'base'})") from None
            check_memory(trial, f"trial {where or 'base'}")
            if trial.hash in seen:
                raise ConfigError(f"grid: two trials resolve to the same config ({point})")
            seen.add(trial.hash)
            trials.append(trial)
        return trials


def load_sweep(path: str | Path, profile: str | None = None) -> SweepConfig:
    """Read, apply ``profile`` and validate a sweep YAML (every trial is expanded once)."""
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
        sweep.expand()
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
    check_memory(trial, str(path))
    return trial
