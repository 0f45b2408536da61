"""`make plots`: collect every sweep, analyse it as its sweep file asks, write ``results/``.

:func:`make_all` is the entry point of ``harness plots`` and ``make plots``. What it writes under
``out_dir`` (default ``results/``):

- ``cache/<sweep>.runs.parquet``, ``cache/<sweep>.curves.parquet``: the collected frames
  (``analysis.collect``), and ``cache/<sweep>.sweep.json``: the resolved ``SweepConfig`` the
  sweep's parent run stored, so that everything below can be rebuilt offline from the cache.
- ``<sweep>/<figure>.png`` and ``<sweep>/<table>.csv`` for each sweep (``analysis.studies``;
  files of an earlier run that this one did not write are removed).
- ``report.md``: every finding of every cached sweep in a sentence with its interval and the
  published number (Kimi K2 report, arXiv 2507.20534, and the works it builds on) next to it.
  The whole report is rebuilt from all caches on every call.

Each sweep's figures and report section are also logged as artifacts (``results/``) of the
sweep's parent run when the store holds it, so the MLflow UI shows the fitted laws beside their
runs. :func:`make_routed` (``harness plots`` without ``--out``) keeps the repository's results
apart from a user's: sweeps that ``sweeps/*.yaml`` defines go to ``results/``, any other sweep to
``results-local/`` (not tracked), so plotting one's own sweeps never touches committed files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analysis.claims import Headline, summary_table
from analysis.collect import collect
from analysis.plots import render
from analysis.studies import VAL_SET_NOTE, Study, study
from harness.config import (
    AnalysisSpec,
    ConfigError,
    NotFoundError,
    SweepConfig,
    check_name,
    is_valid_name,
    load_sweep,
    read_yaml,
)
from harness.store import Store, default_tracking_uri, store_exists

log = logging.getLogger(__name__)

RESULTS = Path("results")
LOCAL_RESULTS = Path("results-local")
SWEEPS = Path("sweeps")
CACHE = "cache"


def mlflow_sweeps(uri: str | None) -> list[str]:
    """Sweeps in the MLflow store; [] (with a warning) when it is missing or unreachable."""
    if not store_exists(uri):
        log.warning("no MLflow store at %s: using the cache only", uri or default_tracking_uri())
        return []
    try:
        return Store(uri).sweep_names()
    except Exception as e:  # the MLflow client raises many types for an unreachable store
        log.warning("MLflow store unreachable (%s): using the cache only", e)
        return []


def cached_sweeps(cache_dir: Path) -> list[str]:
    """Sweeps with both parquet frames in ``cache_dir``."""
    runs = {p.name.removesuffix(".runs.parquet") for p in cache_dir.glob("*.runs.parquet")}
    curves = {p.name.removesuffix(".curves.parquet") for p in cache_dir.glob("*.curves.parquet")}
    return sorted(n for n in runs & curves if is_valid_name(n))


@dataclass(frozen=True)
class SweepInfo:
    """What the analysis needs from a sweep file: its spec, varied axes and description."""

    spec: AnalysisSpec
    axes: list[str] | None
    description: str
    note: str


def _fetch_sweep_json(name: str, uri: str | None) -> str | None:
    """The sweep record of the parent run (:meth:`harness.store.Store.read_sweep_record`)."""
    from mlflow.exceptions import MlflowException

    try:
        return Store(uri).read_sweep_record(name)
    except (MlflowException, OSError) as e:
        log.warning("could not read sweep.json of %s: %s", name, e)
        return None


def sweep_files(folder: Path = SWEEPS) -> list[tuple[Path, str, list[str]]]:
    """``(path, sweep name, profile names)`` of each sweep file in ``folder`` that reads as
    YAML (one that does not is skipped: it cannot define a sweep)."""
    out = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            raw = read_yaml(path)
        except ConfigError:
            continue
        profiles = raw.get("profiles") or {}
        out.append((path, str(raw.get("name", path.stem)),
                    [str(p) for p in profiles] if isinstance(profiles, dict) else []))
    return out


def declared_analysis(name: str, folder: Path = SWEEPS) -> AnalysisSpec | None:
    """The ``analysis`` section of the sweep file in ``folder`` that defines ``name`` (a
    profile's ``<name>-<profile>`` too), or None. How a sweep is read, its claim included, is
    declared in its file, so it applies to runs logged before the section changed."""
    for path, base, profiles in sweep_files(folder):
        if name != base and not (name.startswith(f"{base}-") and
                                 name.removeprefix(f"{base}-") in profiles):
            continue
        try:
            sweep = load_sweep(path, None if name == base else name.removeprefix(f"{base}-"))
        except ConfigError as e:
            log.warning("%s: %s; using the stored analysis section", path, e)
            return None
        return sweep.analysis
    return None


def sweep_info(name: str, uri: str | None, cache_dir: Path, fetch: bool) -> SweepInfo:
    """The sweep's spec from MLflow (when ``fetch``; cached next to the parquet) or the cache;
    the default spec (curves by optimizer arm) when neither has it. The analysis section of
    the repository's sweep file (:func:`declared_analysis`), when one defines the sweep, wins
    over the stored one."""
    info = _stored_info(name, uri, cache_dir, fetch)
    declared = declared_analysis(name)
    return replace(info, spec=declared) if declared is not None else info


def _stored_info(name: str, uri: str | None, cache_dir: Path, fetch: bool) -> SweepInfo:
    path = cache_dir / f"{name}.sweep.json"
    text = _fetch_sweep_json(name, uri) if fetch else None
    if text is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    elif path.exists():
        text = path.read_text()
    if text is None:
        return SweepInfo(AnalysisSpec(), None, "",
                         "No sweep.json was found for this sweep: default analysis (curves by "
                         "optimizer arm).")
    raw: dict[str, Any] = json.loads(text)
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as e:
        spec = AnalysisSpec.model_validate(raw.get("analysis") or {})
        return SweepInfo(spec, None, str(raw.get("description", "")),
                         f"The stored sweep.json does not validate ({e.error_count()} errors): "
                         "only its analysis section is used.")
    return SweepInfo(sweep.analysis, sweep.axes, sweep.description, "")


def write_study(result: Study, folder: Path) -> list[Path]:
    """Write a study's figures (PNG) and tables (CSV) to ``folder``; remove stale ones."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [render(job.draw, job.data, folder / f"{job.name}.png") for job in result.figures]
    for name, table in result.tables.items():
        path = folder / f"{name}.csv"
        table.to_csv(path, index=False, float_format="%.6g")
        written.append(path)
    for old in [*folder.glob("*.png"), *folder.glob("*.csv")]:
        if old not in written:
            old.unlink()
    return written


def md(text: str) -> str:
    """Escape ``*`` (as in L*) outside code spans, so it cannot open or close emphasis."""
    pieces = text.split("`")
    return "`".join(p if i % 2 else p.replace("*", r"\*") for i, p in enumerate(pieces))


def section(result: Study, rel: str) -> str:
    """The report section of one study; ``rel`` is its folder relative to report.md."""
    lines = [f"## {result.name}", ""]
    if result.description:
        lines += [md(result.description.strip()), ""]
    lines += [md(result.summary), ""]
    refs = [f.reference for f in result.findings]
    for i, f in enumerate(result.findings):
        # a published number shared by consecutive findings is quoted once, after the last
        last = f.reference and (i + 1 == len(refs) or refs[i + 1] != f.reference)
        lines.append(f"- {md(f.text)}" + (f" *Published: {md(f.reference)}.*" if last else ""))
    lines.append("")
    for job in result.figures:
        lines += [f"![{job.name}]({rel}/{job.name}.png)", "", f"*{md(job.caption)}*", ""]
    if result.tables:
        links = ", ".join(f"[{n}.csv]({rel}/{n}.csv)" for n in result.tables)
        lines += [f"Tables: {links}.", ""]
    return "\n".join(lines)


def summary_section(headlines: list[Headline]) -> list[str]:
    """The claims table at the top of the report (nothing when no study has a headline)."""
    table = summary_table(headlines)
    if not table:
        return []
    return ["## Summary: the published claims, tested small", "", SUMMARY_INTRO, "", table, ""]


SUMMARY_INTRO = (
    "One row per claimed arm (details, figures and every target loss in the study's section "
    "below). Each sweep file declares its claim (`analysis.claim`): what it measures, where it "
    "is read and its kind. *Read-out*: the declared measure at the declared point: the compute "
    "multiplier C_base(L*) / C_arm(L*) (above 1x the arm needs fewer FLOPs for the same loss; "
    "also in wall-clock: the FLOP multiplier times the arms' measured FLOP/s ratio on the "
    "machine that ran them, an indication whose interval leaves out throughput noise) or the "
    "paired final-loss change at the largest common budget, "
    "with its 95% interval. *Paired final-loss change*: always shown, at the largest budget (a "
    "paired t interval from that budget's seeds) and over all pairs (a t interval over the "
    "seeds' mean changes: a seed's budgets share a trunk, so they are not independent); one "
    "seed: from the spread across budgets. *Power*: the minimum detectable effect at 80% power "
    "(two-sided alpha 0.05; t quantiles for a paired change) and "
    "the seeds this design would need for the published effect (or the margin; t quantiles "
    "too). *Verdict* "
    "(`analysis.claims`): an *effect* claim agrees only when the interval excludes no change "
    "on the claimed side; a *no penalty* claim agrees only when the whole 95% interval lies "
    "inside its declared margin (two one-sided tests at 0.025 each, Schuirmann 1987; the common "
    "form at 0.05 each reads the 90% interval, a looser test); a quantity whose bootstrap "
    "failed in more than 10% "
    "of replicates, or whose design allows too few distinct resamples, is *not estimable*; a "
    "best learning rate at the edge of its own grid makes the verdict inconclusive. Anything "
    "else is *inconclusive*: the data do not decide."
)


def val_note(on_val: list[str], n: int) -> str:
    """The header's word on splits: which of the ``n`` sweeps could only be scored on the old
    two-file val set (runs from before the test split), so that no reader takes them for
    test-split numbers."""
    if not on_val:
        return ""
    which = ("Every loss below is" if len(on_val) == n else
             f"In {len(on_val)} of {n} sweeps ({', '.join(on_val)}) every loss is")
    rest = "" if len(on_val) == n else (" The other sweeps chose on the validation split and "
                                        "report the test split.")
    return (f"{which} a validation loss on the old two-file val set (their runs logged "
            "`val/loss` only, no `test/loss`); that same set chose each tuned learning rate, so "
            f"tuned losses are optimistic.{rest}")


def _failed_section(name: str, reason: str) -> str:
    return f"## {name}\n\n- Not analysed: {reason}.\n"


HEADER = """# Results

Written by `make plots` (`analysis.report.make_all`) from the MLflow runs of {n} sweeps ({names}),
cached under `{cache}`. Intervals of fitted quantities are 95% bootstrap percentile intervals
(Efron & Tibshirani 1993) that resample the independent unit: whole seeds within each arm,
or runs within each arm when a sweep has one seed (with the 3-10 seeds a CPU study affords, a
percentile interval rests on few distinct resamples and tends to run narrow: read it as
approximate; paired changes use t intervals, which allow for few seeds); laws are fitted in
log space with a Huber loss (Hoffmann et al. 2022) by `analysis.laws`. {val_note}
Published numbers (Kimi K2 report, arXiv 2507.20534, and the works it builds on)
come from runs at 1e20-1e21 FLOPs; ours are many orders of magnitude smaller, so compare
directions and rough sizes, not digits.
"""


def make_all(experiments: list[str] | None = None, *, refresh: bool = False,
             uri: str | None = None, out_dir: Path = RESULTS, n_boot: int = 200) -> list[Path]:
    """Collect, analyse and write every sweep; return the paths written (report.md last).

    ``experiments``: sweeps to collect (from MLflow when ``refresh`` or not cached yet); None =
    every sweep in the MLflow store at ``uri`` plus every sweep cached under ``out_dir/cache``.
    Sweeps cached but not named are re-analysed from their cache, so report.md always covers
    all of them. ``n_boot``: bootstrap replicates per fit. Raises NotFoundError when a named sweep
    is neither in MLflow nor in the cache; a failed fit is a sentence in the report instead.
    """
    for name in experiments or []:
        check_name(name, "--experiment")
    cache_dir = out_dir / CACHE
    cached = cached_sweeps(cache_dir)
    online = mlflow_sweeps(uri)
    if experiments is None:
        targets = sorted({*online, *cached})
        fetch = set(online) if refresh else set(online) - set(cached)
    else:
        targets = sorted({*experiments, *cached})
        fetch = set(experiments) if refresh else set(experiments) - set(cached)
    written: list[Path] = []
    sections: list[str] = []
    headlines: list[Headline] = []
    on_val: list[str] = []
    for name in sorted(targets, key=report_order):
        try:
            if name in fetch and not store_exists(uri):
                raise NotFoundError(f"no MLflow store at {uri or default_tracking_uri()}")
            collected = collect(name, uri, refresh=name in fetch, cache_dir=cache_dir)
        except NotFoundError as e:
            if experiments is not None and name in experiments:
                known = ", ".join(cached) or "none cached"
                raise NotFoundError(f"sweep '{name}': {e}; cached: {known}") from None
            log.warning("skipping %s: %s", name, e)
            sections.append(_failed_section(name, str(e)))
            continue
        info = sweep_info(name, uri, cache_dir, fetch=name in fetch)
        log.info("analysing %s (%s, %d runs)", name, info.spec.kind, len(collected.runs))
        result = study(name, collected, info.spec, info.axes, info.description, n_boot=n_boot)
        if info.note:
            result = replace(result, summary=f"{result.summary} {info.note}")
        files = write_study(result, out_dir / name)
        written += files
        sections.append(section(result, name))
        if VAL_SET_NOTE in result.summary:
            on_val.append(name)
        headlines += result.headlines
        if name in online:
            _log_to_parent(name, uri, files, section(result, "."))
    report = out_dir / "report.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    header = HEADER.format(n=len(targets), names=", ".join(targets) or "none",
                           cache=f"{out_dir.name}/{CACHE}",
                           val_note=val_note(on_val, len(targets)))
    report.write_text("\n".join([header, *summary_section(headlines), *sections]).rstrip() + "\n")
    written.append(report)
    log.info("wrote %d files under %s", len(written), out_dir)
    return written


CONTROL_SUFFIX = "_control"
"""A sweep named ``<study>_control`` is the positive control of ``<study>``."""


def report_order(name: str) -> tuple[str, int, str]:
    """Sort key of the report's sections: alphabetical, but a study's positive control
    (``sparsity_control``) right before the study it checks, as the first thing under it."""
    base, _, profile = name.partition("-")
    if base.endswith(CONTROL_SUFFIX):
        return base.removesuffix(CONTROL_SUFFIX), 0, profile
    return base, 1, profile


def _log_to_parent(name: str, uri: str | None, files: list[Path], text: str) -> None:
    """The study's figures, tables and report section as artifacts of the sweep's parent run;
    a store that refuses them costs a warning, never the report."""
    from mlflow.exceptions import MlflowException

    try:
        Store(uri).log_results(name, files, text)
    except (MlflowException, OSError) as e:
        log.warning("could not log the results of %s to MLflow: %s", name, e)


def shipped_sweeps(folder: Path = SWEEPS) -> set[str]:
    """Names of the sweeps the repository's ``sweeps/*.yaml`` define, each profile's included
    (``sparsity``, ``sparsity-gpu``); a file that does not read is skipped."""
    names: set[str] = set()
    for _, name, profiles in sweep_files(folder):
        names |= {name, *(f"{name}-{p}" for p in profiles)}
    return names


def make_routed(experiments: list[str] | None = None, *, refresh: bool = False,
                uri: str | None = None, n_boot: int = 200) -> dict[Path, list[Path]]:
    """:func:`make_all` for the repository's sweeps into ``results/`` and for every other sweep
    into ``results-local/``; returns the files written per folder. ``experiments``: the sweeps
    to collect (None: every sweep in the store, plus each folder's cache)."""
    shipped = shipped_sweeps()
    names = experiments if experiments is not None else mlflow_sweeps(uri)
    own = [n for n in names if n not in shipped]
    out = {RESULTS: make_all([n for n in names if n in shipped], refresh=refresh, uri=uri,
                             out_dir=RESULTS, n_boot=n_boot)}
    if own or cached_sweeps(LOCAL_RESULTS / CACHE):
        out[LOCAL_RESULTS] = make_all(own, refresh=refresh, uri=uri, out_dir=LOCAL_RESULTS,
                                      n_boot=n_boot)
    return out
