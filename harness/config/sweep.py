"""Sweep files: one YAML = one experiment (base trial, grid, zip, seeds, resources, profiles).

:class:`SweepConfig` is the validated file; :meth:`SweepConfig.expand` turns it into validated
:class:`~harness.config.trial.TrialConfig` s, once (the list is kept). Reading the YAML safely and
applying a profile is :func:`harness.config.files.load_sweep`. Nothing here depends on the machine:
whether a trial fits is :mod:`harness.preflight`'s question.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from typing import Any, Literal, Self

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from harness.config.errors import ConfigError
from harness.config.trial import Frozen, TrialConfig

MAX_TRIALS = 10_000
"""Most trials one sweep may expand to (a typo in a grid should not hang the expansion)."""


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

    _trials: list[tuple[str, TrialConfig]] | None = PrivateAttr(default=None)

    def expand(self) -> list[TrialConfig]:
        """Validated trials of the sweep, in :meth:`points` order; a bad point raises
        ConfigError naming its key. Expanded once: later calls return the same list."""
        return [trial for _, trial in self.labelled_trials()]

    def labelled_trials(self) -> list[tuple[str, TrialConfig]]:
        """``(label, trial)`` pairs; the label names the trial's axis values for messages
        (``trial model.d_model=2048, train.seed=0``)."""
        if self._trials is None:
            self._trials = self._expand()
        return list(self._trials)

    def _expand(self) -> list[tuple[str, TrialConfig]]:
        out: list[tuple[str, TrialConfig]] = []
        seen: set[str] = set()
        for point in self.points():
            raw = copy.deepcopy(self.base)
            for key, value in point.items():
                set_dotted(raw, key, value)
            where = ", ".join(f"{k}={v}" for k, v in point.items() if k in self.axes)
            label = f"trial {where or 'base'}"
            try:
                trial = TrialConfig.model_validate(raw)
            except ValidationError as e:
                raise ConfigError(f"{one_line(e, 'base')} ({label})") from None
            if trial.hash in seen:
                raise ConfigError(f"grid: two trials resolve to the same config ({point})")
            seen.add(trial.hash)
            out.append((label, trial))
        return out
