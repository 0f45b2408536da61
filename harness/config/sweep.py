"""Sweep files: one YAML = one experiment (base trial, grid, zip, seeds, resources, profiles).

:class:`SweepConfig` is the validated file; :meth:`SweepConfig.expand` turns it into validated
:class:`~harness.config.trial.TrialConfig` s, once (the list is kept). Reading the YAML safely and
applying a profile is :func:`harness.config.files.load_sweep`. Nothing here depends on the machine:
whether a trial fits is :mod:`harness.preflight`'s question.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
import types
from collections.abc import Sequence
from typing import Any, Literal, Self, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from harness.config.errors import ConfigError
from harness.config.frozen import Frozen
from harness.config.names import NAME_RULE, is_valid_name
from harness.config.trial import TrialConfig

MAX_TRIALS = 10_000
"""Most trials one sweep may expand to (a typo in a grid should not hang the expansion)."""


def one_line(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """First pydantic error as ``key.path: rule`` (plus how many more there were).

    ``prefix`` is where the validated mapping sits in the file (``profiles.gpu``); with the
    validated ``model`` an unknown key also names the nearest valid one (``did you mean ...?``)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = _loc(first)
    hint = unknown_key_hint(model, loc) if model is not None else None
    return _line(dotted(prefix, *loc), first, dotted(prefix, *hint) if hint else None,
                 len(errors) - 1)


def dotted(*parts: str) -> str:
    """``a.b.c`` from the non-empty parts."""
    return ".".join(p for p in parts if p)


def _loc(error: ErrorDetails) -> tuple[str, ...]:
    return tuple(str(x) for x in error["loc"])


def _line(key: str, error: ErrorDetails, hint: str | None, more: int) -> str:
    """``key: rule``, the rule in the words of pydantic unless it is an unknown key."""
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        msg = f"unknown key (did you mean {hint}?)" if hint else "unknown key"
    tail = f" (and {more} more)" if more else ""
    return f"{key or '(top level)'}: {msg}{tail}"


def unknown_key_hint(model: type[BaseModel], loc: Sequence[str]) -> tuple[str, ...] | None:
    """``loc`` with its last key replaced by the closest valid key at that level of ``model``
    (``("optim", "nam")`` -> ``("optim", "name")``), or None when no key is close."""
    if not loc:
        return None
    match = difflib.get_close_matches(loc[-1], _fields_at(model, loc[:-1]), n=1)
    return (*loc[:-1], match[0]) if match else None


def _fields_at(model: type[BaseModel], loc: Sequence[str]) -> list[str]:
    """Field names of the config class found at ``loc`` under ``model`` ([] if none is)."""
    cls: type[BaseModel] | None = model
    for key in loc:
        field = cls.model_fields.get(key) if cls is not None else None
        cls = _model_in(field.annotation) if field is not None else None
    return list(cls.model_fields) if cls is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds: ``X`` or ``X | None``; None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        return next((m for a in get_args(annotation) if (m := _model_in(a))), None)
    return None


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


MIN_CPU = 1e-4
"""Ray schedules resources in steps of 0.0001: a finer ``resources.cpu`` can never be placed."""


class Resources(Frozen):
    """Per-trial resources for Ray; GPU fractions pack several trials on one GPU."""

    cpu: float = Field(1.0, ge=MIN_CPU, description="CPU cores per trial (at least 0.0001)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial (fractions allowed)")


class ClaimSpec(Frozen):
    """The published claim a sweep tests, declared before its runs are read."""

    text: str = Field(description="the claim as published, with its source (one line)")
    kind: Literal["effect", "no_penalty"] = Field(
        description="effect: the arm differs from the baseline in `direction`, agrees only when "
        "the 95% interval excludes no change (1x / 0%) on that side; no_penalty: agrees only "
        "when the whole 95% interval lies inside the equivalence `margin` (Schuirmann 1987); "
        "when it leaves the margin only on the better side the verdict keeps this rule and its "
        "text says a penalty beyond the margin is ruled out")
    measure: Literal["multiplier", "loss"] = Field(
        "multiplier", description="multiplier: compute multiplier C_base(L*) / C_arm(L*) (x) "
        "read at `read_at`; loss: paired relative change of final loss, arm over baseline at "
        "the largest common budget (fraction, -0.01 = 1% lower)")
    direction: Literal["better", "worse"] = Field(
        "better", description="effect claims: the arm is better (multiplier > 1x, loss change "
        "< 0) or worse than the baseline")
    margin: float = Field(0.1, gt=0, lt=1, description="no_penalty claims: equivalence margin "
                          "(fraction): multiplier within 1 -/+ margin (x), loss change within "
                          "-/+ margin")
    published: float | None = Field(None, description="the published effect in the claim's "
                                    "measure (x or fraction), for the seeds needed to detect it "
                                    "and the verdict's note on size")
    published_for: str = Field("", description="the comparison the published effect is for "
                               "when it is not the read-out's own arm over baseline (e.g. "
                               "'sparsity 48 over 32'); named in the verdict's note on size")
    arms: list[str | int | float] = Field(
        min_length=1, description="arm values the claim is about, each read against the baseline")
    read_at: float | Literal["largest_budget"] = Field(
        "largest_budget", description="where a multiplier claim is read: a target loss L*, or "
        "largest_budget: the lowest loss both arms reached at their largest common budget")
    differ: str = Field("", description="why a small-scale run might not show the published "
                        "result (shown beside a verdict that does not agree)")
    where: dict[str, float | int | str | None] = Field(
        default_factory=dict, description="loss claims: the paired read-out uses only the runs "
        "with these grid or zip values (dotted keys, e.g. {optim.lr: 0.02}: the setting the "
        "claim is made at); every run is still reported")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.published is not None and self.measure == "multiplier" and self.published <= 0:
            raise ValueError("published: a multiplier must be > 0")
        if self.where and self.measure != "loss":
            raise ValueError("where: only a loss claim (measure: loss) reads a subset of runs")
        return self


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
    best_of: str | tuple[str, ...] | None = Field(
        None, description="axis (or list of axes tuned together, e.g. [optim.lr, "
        "optim.adamw_lr]) tuned per (arm, size): keep the setting with the best final val loss"
    )
    edge: Literal["inconclusive", "allow"] = Field(
        "inconclusive", description="best_of chosen at the smallest or largest value of its arm's "
        "own grid (on any of its axes) in a cell: inconclusive makes the verdict of a claim "
        "that reads that cell inconclusive (the optimum may lie outside the grid); allow only "
        "warns")
    collapsed: Literal["inconclusive", "report"] | None = Field(
        None, description="runs whose routing collapsed (harness.routing): inconclusive makes "
        "the verdict on an arm (or baseline) where most runs collapsed inconclusive; report only "
        "counts them in the verdict (null: inconclusive for kind sparsity, else report)")
    claim: ClaimSpec | None = Field(None, description="the published claim the sweep tests; "
                                    "none: no verdict, the study is descriptive")

    @property
    def collapse_rule(self) -> str:
        """``collapsed`` with its default by kind resolved."""
        if self.collapsed is not None:
            return self.collapsed
        return "inconclusive" if self.kind == "sparsity" else "report"

    @property
    def tuned(self) -> tuple[str, ...]:
        """The ``best_of`` axes as a tuple (empty when nothing is tuned)."""
        if self.best_of is None:
            return ()
        return (self.best_of,) if isinstance(self.best_of, str) else self.best_of

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        if isinstance(v, tuple) and (not v or len(set(v)) < len(v)):
            raise ValueError("best_of: a list of axes must name at least one axis, each once")
        return v

    @model_validator(mode="after")
    def _claim_fits_kind(self) -> Self:
        if self.claim is None:
            return self
        if self.kind == "curves":
            raise ValueError("claim: kind 'curves' tests no claim (use multiplier or sparsity)")
        if self.kind == "logits" and self.claim.measure != "loss":
            raise ValueError("claim.measure: a logits study reads the loss change (loss)")
        return self


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
    share_prefixes: bool = Field(
        True, description="WSD trials that differ only in train.tokens train their stable "
        "prefix once; each budget's cooldown branches from it (docs/design.md)")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    analysis: AnalysisSpec = AnalysisSpec()
    profile: str | None = Field(None, description="the profile applied (set by load_sweep)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not is_valid_name(v):  # it becomes folder and file names (harness.config.names)
            raise ValueError(NAME_RULE)
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
        claim = self.analysis.claim
        for key, value in (claim.where if claim is not None else {}).items():
            axis = self.grid.get(key, self.zip.get(key))
            if axis is None:
                raise ValueError(f"analysis.claim.where.{key}: not a grid or zip key")
            if value not in axis:
                raise ValueError(f"analysis.claim.where.{key}: {value!r} is not among the "
                                 f"axis values {axis}")
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
        self.check()
        assert self._trials is not None
        return list(self._trials)

    def check(self, where: str = "") -> None:
        """Expand and keep the trials (once); a bad point raises ConfigError naming the key as
        the file spells it under ``where`` (``profiles.gpu`` for an applied profile):
        ``grid.optim.nam: unknown key (did you mean optim.name?) (trial ...)``."""
        if self._trials is None:
            self._trials = self._expand(where)

    def _sources(self) -> dict[str, str]:
        """Which part of the file sets each point key: ``grid``, ``zip`` or ``seeds``."""
        return {**dict.fromkeys(self.grid, "grid"), **dict.fromkeys(self.zip, "zip"),
                "train.seed": "seeds"}

    def _expand(self, where: str) -> list[tuple[str, TrialConfig]]:
        out: list[tuple[str, TrialConfig]] = []
        seen: set[str] = set()
        sources = self._sources()
        for point in self.points():
            values = ", ".join(f"{k}={v}" for k, v in point.items() if k in self.axes)
            label = f"trial {values or 'base'}"
            raw = copy.deepcopy(self.base)
            for key, value in point.items():
                try:
                    set_dotted(raw, key, value)
                except ConfigError as e:
                    raise ConfigError(f"{dotted(where, sources[key])}.{e} ({label})") from None
            try:
                trial = TrialConfig.model_validate(raw)
            except ValidationError as e:
                raise ConfigError(f"{_trial_error(e, sources, where)} ({label})") from None
            if trial.hash in seen:
                raise ConfigError(
                    f"{dotted(where, 'grid')}: two trials resolve to the same config ({point})"
                )
            seen.add(trial.hash)
            out.append((label, trial))
        return out


def _trial_error(err: ValidationError, sources: dict[str, str], where: str) -> str:
    """A trial's first error, located where the user wrote the key: in ``base``, or the grid,
    zip or seeds axis that set it (``grid.optim.nam``, hint ``optim.name``)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = _loc(first)
    at = ".".join(loc)
    unknown = first["type"] == "extra_forbidden"
    hint = unknown_key_hint(TrialConfig, loc) if unknown else None
    axis = next((a for a in sources if at == a or at.startswith(f"{a}.")
                 or (unknown and a.startswith(f"{at}."))), None)
    if axis is None:
        return _line(dotted(where, "base", at), first,
                     dotted(where, "base", *hint) if hint else None, len(errors) - 1)
    section = sources[axis]
    key = section if section == "seeds" else f"{section}.{axis}{at[len(axis):]}"
    axis_hint = ".".join(hint) + axis[len(at):] if hint else None
    return _line(dotted(where, key), first, axis_hint, len(errors) - 1)
