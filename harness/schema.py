"""The YAML reference, generated from the pydantic models so that it cannot drift from them.

``harness schema`` prints :func:`yaml_reference` and ``make docs`` writes it to
``docs/yaml-reference.md``; ``tests/test_schema.py`` checks that the committed file equals it.
Every row is one YAML key: its dotted path, its type with the bounds the model enforces, its
default and the field's description (where the unit is stated).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from harness.config import AnalysisSpec, Resources, SweepConfig, TrialConfig
from harness.config.sweep import ClaimSpec


@dataclass(frozen=True)
class Row:
    """One documented YAML key."""

    key: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Section:
    """The keys of one config model, at one dotted prefix."""

    prefix: str
    model: type[BaseModel]
    rows: tuple[Row, ...]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_name(annotation: Any) -> str:
    """Readable YAML type: ``int``, ``float or null``, ``one of wsd, cosine``, ``list of int``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        tail = " or null" if type(None) in args else ""
        return ", ".join(names) + tail if len(names) > 1 else names[0] + tail
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        value = args[1] if args else Any
        if typing.get_origin(value) is list:
            return "mapping: dotted key -> list"
        if typing.get_origin(value) is dict:
            return "mapping: name -> mapping"
        return "mapping"
    if annotation is Any:
        return "any"
    if _is_model(annotation):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: FieldInfo) -> str:
    """The numeric and length bounds pydantic enforces, as ``> 0``, ``>= 2, <= 65536``."""
    out = []
    for m in field.metadata:
        if isinstance(m, at.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, at.Ge):
            out.append(f">= {m.ge}")
        elif isinstance(m, at.Lt):
            out.append(f"< {m.lt}")
        elif isinstance(m, at.Le):
            out.append(f"<= {m.le}")
        elif isinstance(m, at.MinLen):
            out.append(f"at least {m.min_length} item{'s' if m.min_length != 1 else ''}")
    return ", ".join(out)


def default_text(field: FieldInfo) -> str:
    """The default as YAML spells it (``null``, ``true``, ``[0]``), or ``required``."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "its keys' defaults"
    if isinstance(value, str):
        return f"`{json.dumps(value) if value == '' else value}`"
    return f"`{json.dumps(value)}`"


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def section(model: type[BaseModel], prefix: str) -> Section:
    """Rows for the fields of ``model`` at ``prefix`` (nested models get their own section)."""
    rows = []
    for name, field in model.model_fields.items():
        kind = type_name(field.annotation)
        limit = bounds(field)
        key = f"{prefix}{name}"
        nested = f"the keys of `{key}` below" if _is_model(field.annotation) else ""
        rows.append(Row(
            key=key,
            type=f"{kind}, {limit}" if limit else kind,
            default=default_text(field),
            description=field.description or nested,
        ))
    return Section(prefix.rstrip("."), model, tuple(rows))


def sections(model: type[BaseModel], prefix: str = "") -> list[Section]:
    """``model``'s section, then one for each nested config model, depth first."""
    out = [section(model, prefix)]
    for name, field in model.model_fields.items():
        if _is_model(field.annotation):
            out.extend(sections(field.annotation, f"{prefix}{name}."))
    return out


def trial_sections() -> list[Section]:
    """model, model.attention, model.moe, optim, data, train (the keys of a TrialConfig)."""
    return [s for s in sections(TrialConfig) if s.prefix]


def sweep_sections() -> list[Section]:
    """The sweep file's top level, then ``resources``, ``analysis`` and ``analysis.claim``."""
    return [section(SweepConfig, ""), section(Resources, "resources."),
            section(AnalysisSpec, "analysis."), section(ClaimSpec, "analysis.claim.")]


def all_keys() -> set[str]:
    """Every documented dotted key (trial keys without the ``base.`` prefix)."""
    return {row.key for s in [*sweep_sections(), *trial_sections()] for row in s.rows}


def _table(sec: Section) -> list[str]:
    doc = (sec.model.__doc__ or "").strip().splitlines()[0].replace("``", "`")
    title = f"`{sec.prefix}`" if sec.prefix else "Top level"
    lines = [f"### {title}", "", f"{doc} (`{sec.model.__name__}`)", "",
             "| key | type | default | description |", "|---|---|---|---|"]
    for row in sec.rows:
        lines.append(f"| `{row.key}` | {_escape(row.type)} | {_escape(row.default)} | "
                     f"{_escape(row.description)} |")
    return [*lines, ""]


def yaml_reference() -> str:
    """The whole reference as Markdown (the text of ``docs/yaml-reference.md``)."""
    lines = [
        "# YAML reference",
        "",
        "<!-- Generated by `harness schema` (`make docs`) from the pydantic models in",
        "     harness/config/ (trial, data, sweep). Do not edit by hand. -->",
        "",
        "A sweep file is one experiment: a `base` trial and the axes that vary around it.",
        "Unknown keys are errors; every value is checked when the file is loaded, and a bad one",
        "stops `harness submit` with one line naming the key (exit status 2). Rules that tie",
        "several keys together (`moe.top_k <= moe.n_routed_experts`, `batch_tokens` a multiple",
        "of `seq_len`, ...) are checked at load time too and named in the same way.",
        "",
        "Units: token counts are tokens (never steps), widths are elements, `lr` is the peak",
        "learning rate per optimizer step, `*_every` keys say whether they count tokens or steps.",
        "",
        "## Sweep file",
        "",
        "`harness submit SWEEP.yaml [--profile NAME]`. A profile is a mapping with the same",
        "top-level keys (except `name` and `profiles`), deep-merged over the file.",
        "",
    ]
    for sec in sweep_sections():
        lines += _table(sec)
    lines += [
        "## Trial",
        "",
        "The keys of `base:` in a sweep file, and of a file for `harness train TRIAL.yaml`.",
        "`grid:` and `zip:` axes name the same dotted paths (`model.moe.n_routed_experts`),",
        "without `base.`; `train.seed` is set by the top-level `seeds` list.",
        "",
    ]
    for sec in trial_sections():
        lines += _table(sec)
    return "\n".join(lines).rstrip() + "\n"
