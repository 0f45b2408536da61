"""Reading config files: safe YAML, profiles applied, every key validated, one-line errors.

``load_sweep(path, profile)`` reads a sweep YAML safely, applies a named profile, validates every
key and every expanded trial (of every profile, used or not), and raises :class:`ConfigError` with
one line that names the YAML key as the file spells it and the rule, with the nearest valid key
for a typo. ``load_trial(path)`` does the same for one ``TrialConfig`` (``harness train``).
``read_yaml`` bounds size, nodes (aliases expanded) and depth before building anything.
Nothing is launched or written while loading, and nothing here looks at the machine.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
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

_FastParser: type = getattr(yaml, "CBaseLoader", _Loader)
"""libyaml's parser when PyYAML has it: only its events are read (by :func:`check_shape`),
nothing is constructed from them."""


MAX_YAML_BYTES = 1 << 20
"""Largest config file read (1 MiB). The shipped sweeps are under 10 KiB; before this bound a
3.9 MB file took about a minute and 1.3 GB to ``--dry-run``."""
MAX_YAML_NODES = 100_000
"""Most YAML nodes (scalars, lists, mappings) a file may hold with every alias expanded, counted
before anything is built: a 4 KB alias bomb ("billion laughs") in an unused profile passed
``--dry-run`` and reached 2.9 GB when the sweep record was written. The shipped sweeps hold
under 1,000."""
MAX_YAML_DEPTH = 32
"""Deepest nesting, aliases included, a scalar counting one level (``profiles.gpu.base.model.
attention.n_heads: 12`` is 7, the deepest in the shipped sweeps); a 400-deep list in an unused
profile passed ``--dry-run`` and then failed to serialize at submit."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping with the safe loader; any failure is a one-line ConfigError.

    Size, nodes with aliases expanded and nesting depth are bounded (``MAX_YAML_*``) before the
    file is built, so a hostile file is refused in well under a second and a few MiB."""
    p = Path(path)
    text = _read_text(p)
    try:
        check_shape(text)
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass
    except ConfigError as e:  # a bound of check_shape
        raise ConfigError(f"{p}: {e}") from None
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


def _read_text(p: Path) -> str:
    """The file as text, at most ``MAX_YAML_BYTES`` of it read (a FIFO or /dev/zero too)."""
    try:
        with p.open("rb") as f:
            blob = f.read(MAX_YAML_BYTES + 1)
        if len(blob) > MAX_YAML_BYTES:
            raise ConfigError(f"{p}: {_size(p)} is too big for a config file "
                              f"(at most {MAX_YAML_BYTES >> 20} MiB)")
        return blob.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None


def _size(p: Path) -> str:
    """``4.2 MiB``, or ``over 1 MiB`` where the size is not known (a pipe)."""
    try:
        size = p.stat().st_size
    except OSError:
        size = 0
    return f"{size / 2**20:.1f} MiB" if size > MAX_YAML_BYTES else "over 1 MiB"


@dataclass
class _Open:
    """A list or mapping being scanned: its anchor, nodes counted before it, its height."""

    anchor: str | None
    start: int
    height: int = 1


def check_shape(text: str) -> None:
    """Refuse YAML with more than ``MAX_YAML_NODES`` nodes once aliases are expanded, or nested
    deeper than ``MAX_YAML_DEPTH``, from the event stream: nothing is built, and an alias costs
    the size its anchored node had when it was complete (an alias inside its own anchor, a
    recursive structure, counts one: it builds a cycle, not copies). ConfigError without the
    file name; a YAML syntax error is the loader's to report, as yaml.YAMLError."""
    try:
        _scan(yaml.parse(text, Loader=_FastParser))  # libyaml: ~2 µs an event
    except yaml.YAMLError:
        _scan(yaml.parse(text, Loader=_Loader))  # libyaml disagrees: scan as the loader parses


def _scan(events: Iterator[yaml.Event]) -> None:
    """Count nodes and depth over ``events``; heights are in levels (a scalar is 1). Scalars,
    the most common event, take the short path (100k events scan in ~0.2 s)."""
    open_: list[_Open] = []
    done: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) of its finished node
    nodes = 0
    for ev in events:
        kind = type(ev)
        if kind is yaml.ScalarEvent:
            size, height = 1, 1
            if ev.anchor is not None:
                done[ev.anchor] = (1, 1)
        elif kind is yaml.AliasEvent:
            size, height = done.get(ev.anchor or "", (1, 1))
        elif kind in (yaml.SequenceStartEvent, yaml.MappingStartEvent):
            open_.append(_Open(ev.anchor, nodes))
            nodes += 1
            if nodes > MAX_YAML_NODES or len(open_) > MAX_YAML_DEPTH:
                _refuse(ev, nodes, len(open_))
            continue
        elif kind in (yaml.SequenceEndEvent, yaml.MappingEndEvent):
            top = open_.pop()
            if top.anchor is not None:
                done[top.anchor] = (nodes - top.start, top.height)
            size, height = 0, top.height
        else:  # stream and document events
            continue
        if open_ and open_[-1].height <= height:
            open_[-1].height = height + 1
        nodes += size
        if nodes > MAX_YAML_NODES or len(open_) + height > MAX_YAML_DEPTH:
            _refuse(ev, nodes, len(open_) + height)


def _refuse(ev: yaml.Event, nodes: int, depth: int) -> None:
    """Raise the bound that ``ev`` broke, with its line."""
    line = f"line {ev.start_mark.line + 1}: " if ev.start_mark is not None else ""
    if depth > MAX_YAML_DEPTH:
        raise ConfigError(f"{line}nested deeper than {MAX_YAML_DEPTH} levels, aliases "
                          f"included (a config nests at most {MAX_YAML_DEPTH})")
    raise ConfigError(f"{line}more than {MAX_YAML_NODES} YAML nodes with aliases expanded "
                      f"(a config holds at most {MAX_YAML_NODES})")


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


PROFILE_KEYS = tuple(k for k in SweepConfig.model_fields
                     if k not in ("name", "profiles", "profile"))
"""Top-level keys a profile may override (deep-merged over the file)."""


def load_sweep(path: str | Path, profile: str | None = None) -> SweepConfig:
    """Read and validate a sweep YAML and return it with ``profile`` applied (every trial is
    expanded, once). Every profile is validated too, used or not: a bad one names
    ``profiles.<name>.<key>``, so that what passes ``--dry-run`` cannot fail later."""
    raw = read_yaml(path)
    sweep = _validated(raw, path, "")
    if profile is not None and profile not in sweep.profiles:
        known = ", ".join(sweep.profiles) or "none"
        raise ConfigError(f"{path}: profiles.{profile}: unknown profile (known: {known})")
    chosen = sweep
    for name, over in sweep.profiles.items():
        try:
            applied_raw = apply_profile(raw, name, over)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        applied = _validated(applied_raw, path, f"profiles.{name}")
        chosen = applied if name == profile else chosen
    return chosen


def apply_profile(raw: dict[str, Any], name: str, over: dict[str, Any]) -> dict[str, Any]:
    """The file's mapping with profile ``name`` deep-merged over it, named ``<name>-<profile>``
    (its own MLflow experiment: a profile's runs never mix with the default's)."""
    for key in over:
        if key not in PROFILE_KEYS:
            near = difflib.get_close_matches(str(key), PROFILE_KEYS, n=1)
            hint = f" (did you mean profiles.{name}.{near[0]}?)" if near else ""
            raise ConfigError(f"profiles.{name}.{key}: unknown key{hint}")
    merged = deep_merge(raw, over)
    merged["profile"] = name
    merged["name"] = f"{raw.get('name')}-{name}"
    return merged


def _validated(raw: dict[str, Any], path: str | Path, where: str) -> SweepConfig:
    """``raw`` as a SweepConfig with every trial expanded; errors name keys under ``where``."""
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {one_line(e, where, SweepConfig)}") from None
    try:
        sweep.check(where)  # validates every trial; the list is kept for the caller
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return sweep


def load_trial(path: str | Path) -> TrialConfig:
    """Read one TrialConfig YAML (``harness train``)."""
    raw = read_yaml(path)
    try:
        trial = TrialConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {one_line(e, model=TrialConfig)}") from None
    return trial
