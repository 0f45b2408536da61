"""Which runs and which (FLOPs, loss) points a sweep's analysis uses (``analysis.studies``).

Runs (:func:`annotate`): each run gets its arm (the value in the sweep's ``analysis.arm``
column) and a readable label, its *condition* (the other settings the sweep varies, seeds and
the ``best_of`` axis excepted: budget, size, ...), and whether it is usable (finished, with a
final val loss). An axis counts as part of the arm when every arm has one value of it (the
optimizer name of the ``arm`` column, the expert count of a ``sparsity`` sweep); comparisons
between arms are made at equal condition.

``best_of`` (:func:`select_best`): per (arm, condition) keep the runs of the ``best_of`` value
(e.g. optim.lr) with the lowest mean final val loss over seeds, so every arm is compared at its
own tuned setting (Wen et al. 2025, "Fantastic pretraining optimizers and where to find them").
A cell whose best value is the smallest or largest of the values tried *in that cell* (each arm
has its own grid) is an edge cell (``Runs.edges``): its optimum may lie outside the grid.

Fit points (:func:`fit_points`): one final point per run (training FLOPs, final val loss) when
every arm has >= 3 budgets (distinct token budgets x model sizes): only the end of a WSD or
cosine run is annealed, so intermediate points are not compute-optimal (Hoffmann et al. 2022 fit
one run per budget; Hagele et al. 2024).
Otherwise the val-loss points along each run after warmup, grouped by run so that bootstraps
resample whole runs; the note says that these stable-phase points are not cooled down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ValidationError

from harness.config import AnalysisSpec, TrainConfig
from harness.schedule import warmup_steps

MIN_BUDGETS = 3
"""Distinct budgets every arm needs before fits use one final point per run."""
SEED_AXIS = "train.seed"
BUDGET_AXIS = "train.tokens"
CONFIG_ROOTS = ("model", "optim", "data", "train")


def fmt_value(value: Any) -> str:
    """Compact text for a setting: ``8``, ``131k``, ``2M``, ``0.003``, ``muon``."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | float | np.integer | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return "none"
        if v.is_integer() and abs(v) >= 10_000:
            return f"{v / 1e6:g}M" if abs(v) >= 1e6 else f"{v / 1e3:g}k"
        return f"{v:.4g}"
    return "none" if value is None else str(value)


def arm_label(column: str, value: Any) -> str:
    """How an arm reads in text and legends: ``muon``, ``sparsity 8``, ``n_heads=8``."""
    text = fmt_value(value)
    if column == "arm":
        return text
    if column == "sparsity":
        return f"sparsity {text}"
    return f"{column.rsplit('.', 1)[-1]}={text}"


def sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers first in numeric order, then text in alphabetical order."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def same_value(a: Any, b: Any) -> bool:
    """``8``, ``8.0`` and ``"8"`` are the same arm value."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def rows_where(frame: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of ``frame`` whose columns hold the values ``where`` names
    (``analysis.claim.where``); KeyError for a column the frame lacks."""
    for key, value in where.items():
        frame = frame[frame[key].map(lambda v, value=value: same_value(v, value))]
    return frame


def where_text(where: Mapping[str, Any]) -> str:
    """``optim.lr = 0.02, ...``: the settings ``analysis.claim.where`` names, for the report."""
    return ", ".join(f"{k} = {v}" for k, v in where.items())


@dataclass(frozen=True)
class Runs:
    """A sweep's runs with analysis columns added (module docstring).

    ``frame`` adds: ``arm_value``, ``arm_label``, ``condition``, ``seed``, ``budget`` (token
    budget and model size, or FLOPs when neither is logged), ``usable``, ``selected`` (after
    :func:`select_best`). ``arm_axes``: settings that are part of the arm;
    ``condition_axes``: the other varied settings; ``notes``: sentences for the report.
    """

    frame: pd.DataFrame
    arm_column: str
    arm_axes: tuple[str, ...]
    condition_axes: tuple[str, ...]
    notes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...] = ()  # (arm label, condition) with best_of at its edge

    def arms(self, selected: bool = True) -> list[str]:
        """Arm labels in sorted arm-value order."""
        f = self.frame[self.frame["selected"]] if selected else self.frame
        pairs = {label: value for label, value in zip(f["arm_label"], f["arm_value"], strict=True)}
        return sorted(pairs, key=lambda label: sort_key(pairs[label]))

    def value_of(self, label: str) -> Any:
        """The arm value behind a label."""
        return self.frame.loc[self.frame["arm_label"] == label, "arm_value"].iloc[0]


def _varied(runs: pd.DataFrame, axes: Sequence[str] | None) -> list[str]:
    """The sweep's axes present in the table, else every config column with > 1 value."""
    if axes is not None:
        return [a for a in axes if a in runs.columns]
    return [c for c in runs.columns
            if c.split(".")[0] in CONFIG_ROOTS and "." in c and c != "data.fingerprint"
            and runs[c].astype(str).nunique() > 1]


def annotate(runs: pd.DataFrame, spec: AnalysisSpec, axes: Sequence[str] | None) -> Runs:
    """Add arm, condition, seed and usability to a runs table (module docstring)."""
    notes: list[str] = []
    column = spec.arm
    if column not in runs.columns:
        notes.append(f"The arm column `{column}` is not in the runs table; the optimizer arm "
                     "(`arm`) is used instead.")
        column = "arm"
    frame = runs.copy()
    frame["arm_value"] = frame[column] if column in frame.columns else "all"
    frame["arm_value"] = frame["arm_value"].where(frame["arm_value"].notna(), "none")
    frame["arm_label"] = [arm_label(column, v) for v in frame["arm_value"]]
    varied = [a for a in _varied(frame, axes) if a != SEED_AXIS and a not in spec.tuned]
    if spec.size is not None and spec.size in frame.columns and spec.size not in varied:
        varied.append(spec.size)
    per_arm = frame.groupby("arm_label")
    several = per_arm.ngroups > 1
    arm_axes = tuple(a for a in varied if a == column or (
        several and per_arm[a].agg(lambda s: s.astype(str).nunique()).max() <= 1))
    cond_axes = tuple(a for a in varied if a not in arm_axes)
    frame["condition"] = [
        ", ".join(f"{a.rsplit('.', 1)[-1]}={fmt_value(row[a])}" for a in cond_axes) or "all"
        for _, row in frame.iterrows()
    ]
    frame["seed"] = frame[SEED_AXIS] if SEED_AXIS in frame.columns else 0
    budget = [c for c in (BUDGET_AXIS, spec.size) if c is not None and c in frame.columns]
    frame["budget"] = frame[budget or ["flops"]].map(str).agg("|".join, axis=1)
    loss = pd.to_numeric(frame.get("final_val_loss"), errors="coerce")
    # runs of an older harness without the derived params are left out; an arm value that is
    # None (a feature off, e.g. qk_clip_tau) is an arm of its own
    known = frame["arm"].notna() if "arm" in frame.columns else True
    frame["usable"] = (frame["status"] == "finished") & np.isfinite(loss.to_numpy(float)) & known
    frame["selected"] = frame["usable"]
    split = reported_split(frame)
    frame[REPORTED] = pd.to_numeric(frame[f"final_{split}_loss"], errors="coerce")
    frame[REPORTED_SPLIT] = split
    return Runs(frame, column, arm_axes, cond_axes, tuple(notes))


REPORTED, REPORTED_SPLIT = "final_loss", "loss_split"
"""Columns of the runs table: the final loss every reported number uses, and its split."""


def reported_split(frame: pd.DataFrame) -> str:
    """``test`` when every usable run logged a final test loss, else ``val``: learning rates
    and other choices are made on val (:func:`select_best`), results are reported on test;
    runs of a harness that had no test split can only be reported on val, and say so."""
    if "final_test_loss" not in frame.columns:
        return "val"
    test = pd.to_numeric(frame.loc[frame["usable"], "final_test_loss"], errors="coerce")
    return "test" if len(test) and bool(np.isfinite(test.to_numpy(float)).all()) else "val"


Tuned = str | Sequence[str] | None
"""``analysis.best_of``: one axis, several tuned together, or none."""


def tuned_axes(best_of: Tuned) -> tuple[str, ...]:
    """``best_of`` as a tuple of axes (empty when nothing is tuned)."""
    if best_of is None:
        return ()
    return (best_of,) if isinstance(best_of, str) else tuple(best_of)


def _setting_value(value: Any) -> Any:
    """A tuned value as a hashable key: numbers as floats, missing (an axis an arm does not
    use, e.g. ``optim.adamw_lr`` of an AdamW run) as ``None``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def setting_text(axes: Sequence[str], values: Sequence[Any]) -> str:
    """``lr=0.01, adamw_lr=0.003``: the tuned values of one setting, unused axes left out."""
    return ", ".join(f"{a.rsplit('.', 1)[-1]}={fmt_value(v)}"
                     for a, v in zip(axes, values, strict=True) if v is not None)


def _edge_axes(group: pd.DataFrame, axes: Sequence[str], best: tuple[Any, ...]) -> list[str]:
    """The axes whose best value is the smallest or largest of the >= 2 values tried in this
    cell (each arm has its own grid; a coordinate-wise design tries each axis around the
    others' centre values)."""
    edge = []
    for axis, value in zip(axes, best, strict=True):
        tried = sorted({v for v in group[axis] if v is not None}, key=sort_key)
        if value is not None and len(tried) >= 2 and value in (tried[0], tried[-1]):
            edge.append(axis)
    return edge


def _shown(axes: Sequence[str], setting: tuple[Any, ...]) -> str:
    """A chosen setting in a note: ``0.01`` for one tuned axis, ``(lr=0.02, adamw_lr=0.01)``."""
    return fmt_value(setting[0]) if len(axes) == 1 else f"({setting_text(axes, setting)})"


def _span(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _search_text(n_settings: pd.Series) -> str:
    """How many settings were tried per cell (``n_settings``: index arm, condition), per arm
    when the arms' searches differ: ``4-10`` or ``adamw 4, muon 10``."""
    if n_settings.empty:
        return "0"
    if _uneven_medians(n_settings) is None:
        return _span(n_settings)
    return ", ".join(f"{arm} {_span(g)}" for arm, g in n_settings.groupby(level=0, sort=False))


def _uneven_medians(n_settings: pd.Series) -> pd.Series | None:
    """Each arm's median search per cell when one arm's exceeds another's, else None (also when
    nothing was searched; the one test both notes use)."""
    if n_settings.empty:
        return None
    most = n_settings.groupby(level=0).median()
    return most if most.max() > most.min() else None


def _uneven_search(n_settings: pd.Series, what: str) -> list[str]:
    """A note when one arm was searched over more settings than another: the better-searched
    arm can gain from the search alone (Wen et al. 2025, arXiv 2509.02046, tune every
    optimizer's hyperparameters with equal care before comparing)."""
    most = _uneven_medians(n_settings)
    if most is None:
        return []
    return [f"The search is uneven: {most.idxmax()} tried {most.max():g} {what} per cell (median) "
            f"and {most.idxmin()} {most.min():g}, so part of a difference between them may "
            f"come from the wider search."]


def select_best(runs: Runs, best_of: Tuned) -> Runs:
    """Keep, per (arm, condition), the runs of the ``best_of`` setting (one axis, or a tuple
    of axes tuned together) with the lowest mean final val loss over seeds; ``selected`` marks
    them. Notes name the chosen settings and flag a choice at the edge of the values tried on
    any tuned axis (the optimum may lie outside the grid)."""
    wanted = tuned_axes(best_of)
    if not wanted:
        return runs
    frame = runs.frame.copy()
    axes = [a for a in wanted if a in frame.columns]
    missing = [f"`{a}`" for a in wanted if a not in frame.columns]
    if not axes:
        note = f"`best_of` axis {', '.join(missing)} is not in the runs table; every run is kept."
        return Runs(frame, runs.arm_column, runs.arm_axes, runs.condition_axes,
                    (*runs.notes, note))
    setting = pd.Series([tuple(_setting_value(row[a]) for a in axes)
                         for _, row in frame[axes].iterrows()], index=frame.index, dtype=object)
    usable = frame[frame["usable"]].assign(_setting=setting, **{
        a: [s[i] for s in setting[frame["usable"]]] for i, a in enumerate(axes)})
    keep = pd.Series(False, index=frame.index)
    chosen: dict[str, list[tuple[float, str, tuple[Any, ...]]]] = {}  # (FLOPs, condition, best)
    edges: list[tuple[str, str]] = []
    edge_text: list[str] = []
    for (label, cond), group in usable.groupby(["arm_label", "condition"], sort=False):
        means = group.groupby("_setting", sort=False)["final_val_loss"].mean()
        best = means.idxmin()
        keep |= (frame["arm_label"] == label) & (frame["condition"] == cond) & frame["usable"] & (
            setting.map(lambda v, b=best: v == b))
        chosen.setdefault(str(label), []).append((float(group["flops"].mean()), str(cond), best))
        at_edge = _edge_axes(group, axes, best)
        if at_edge:
            edges.append((str(label), str(cond)))
            on = "" if len(axes) == 1 else f" ({', '.join(f'`{a}`' for a in at_edge)})"
            edge_text.append(f"{label} at {cond}{on}")
    frame["selected"] = keep
    picks = "; ".join(f"{arm}: {', '.join(f'{c} {_shown(axes, b)}' for _, c, b in sorted(v))}"
                      for arm, v in chosen.items())
    n_settings = usable.groupby(["arm_label", "condition"])["_setting"].nunique()
    names = ", ".join(f"`{a}`" for a in axes)
    what = "values" if len(axes) == 1 else "settings"
    notes = [f"Best {names} per arm and condition (lowest final val loss; "
             f"{_search_text(n_settings)} {what} tried per cell, each arm on its own grid): "
             f"{picks or 'none'}.", *_uneven_search(n_settings, what)]
    if missing:
        notes.append(f"`best_of` axis {', '.join(missing)} is not in the runs table: not tuned.")
    if edges:
        notes.append(f"At {len(edges)} of {len(n_settings)} (arm, condition) cells the best "
                     f"{names} is the smallest or largest value of that arm's own grid, so "
                     f"the optimum may lie outside it: {'; '.join(edge_text)}.")
    return Runs(frame, runs.arm_column, runs.arm_axes, runs.condition_axes,
                (*runs.notes, *notes), tuple(edges))


def throughput(runs: Runs, curves: pd.DataFrame) -> pd.Series:
    """Measured training FLOP/s per run (index ``run_id``): the median of the logged
    ``perf/tokens_per_s`` over steps times the run's FLOPs per token; empty when not logged."""
    if curves.empty or "perf/tokens_per_s" not in curves.columns or (
            "flops_per_token" not in runs.frame.columns):
        return pd.Series(dtype=float)
    tps = curves.dropna(subset=["perf/tokens_per_s"]).groupby("run_id")["perf/tokens_per_s"]
    fpt = runs.frame.drop_duplicates("run_id").set_index("run_id")["flops_per_token"]
    out = (tps.median() * pd.to_numeric(fpt, errors="coerce").reindex(tps.median().index))
    return out[out > 0].dropna()


def warmup_of(row: pd.Series) -> int:
    """Warmup steps of a run from its logged ``train.*`` params (0 if they do not validate)."""
    raw: dict[str, Any] = {}
    for key, value in row.items():
        if not str(key).startswith("train."):
            continue
        v = value.item() if isinstance(value, np.generic) else value
        if isinstance(v, float) and (math.isnan(v) or v.is_integer()):
            v = None if math.isnan(v) else int(v)
        raw[str(key).removeprefix("train.")] = v
    try:
        return warmup_steps(TrainConfig.model_validate(raw))
    except (ValidationError, TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class FitPoints:
    """Points for the fits (module docstring).

    ``frame``: columns ``run``, ``arm`` (value), ``label``, ``condition``, ``flops``, ``loss``.
    ``display``: every val-loss point of the selected runs (columns ``run``, ``arm`` (label),
    ``flops``, ``loss``, ``used``) for the figures. ``note``: the sentence for the report.
    ``split``: whose loss the fit points are (``test`` where final points come from runs that
    logged a test loss; the curves are always val).
    """

    frame: pd.DataFrame
    display: pd.DataFrame
    source: Literal["final", "curve"]
    note: str
    split: str = "val"

    def axis(self) -> tuple[str, str]:
        """(title words, y label) of a loss-vs-FLOPs figure of these points: its lines are
        val-loss curves, its markers the fit points."""
        if self.split == "val":
            return "val loss", "validation loss"
        return "loss", f"loss: val curves (lines), final {self.split} (markers)"


def _val_points(selected: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Every (flops, val loss) point of the selected runs, with its step and warmup."""
    if curves.empty or not {"val/loss", "flops", "step"} <= set(curves.columns):
        return pd.DataFrame(columns=["run", "arm", "label", "condition", "step", "flops", "loss",
                                     "warmup"])
    runs = selected[["run_id", "arm_value", "arm_label", "condition"]].copy()
    runs["warmup"] = [warmup_of(row) for _, row in selected.iterrows()]
    pts = curves[["run_id", "step", "flops", "val/loss"]].dropna()
    pts = pts[(pts["flops"] > 0) & (pts["val/loss"] > 0)].merge(runs, on="run_id")
    return pts.rename(columns={"run_id": "run", "arm_value": "arm", "arm_label": "label",
                               "val/loss": "loss"})


def fit_points(runs: Runs, curves: pd.DataFrame) -> FitPoints:
    """Final points when every arm has >= MIN_BUDGETS budgets, else curve points after warmup."""
    sel = runs.frame[runs.frame["selected"]]
    budgets = sel.groupby("arm_label")["budget"].nunique()
    val = _val_points(sel, curves)
    cols = ["run", "arm", "label", "condition", "flops", "loss"]
    if len(budgets) and budgets.min() >= MIN_BUDGETS:
        frame = sel[["run_id", "arm_value", "arm_label", "condition", "flops", REPORTED]]
        frame = frame.set_axis(cols, axis=1)
        frame = frame[frame["flops"] > 0].reset_index(drop=True)
        split = str(sel[REPORTED_SPLIT].iloc[0]) if len(sel) else "val"
        note = (f"Fits use one final point per run (training FLOPs, final {split} loss): every arm "
                f"has at least {MIN_BUDGETS} budgets ({int(budgets.min())}-"
                f"{int(budgets.max())}), {len(frame)} runs in all.")
        display = pd.concat([val.assign(used=False), frame.assign(used=True)])
        return FitPoints(frame, _display(display), "final", note, split)
    after = val[val["step"] > val["warmup"]]
    frame = after[cols].reset_index(drop=True)
    few = ", ".join(f"{arm} {int(n)}" for arm, n in budgets.items()) or "no finished runs"
    schedules = sorted(sel["train.schedule"].dropna().astype(str).unique()) if (
        "train.schedule" in sel.columns) else []
    why = {"wsd": "stable-phase points of a WSD schedule are not cooled down",
           "cosine": "mid-run points of a cosine schedule are not annealed",
           "constant": "constant-LR points are never annealed"}
    caveat = "; ".join(why[s] for s in schedules if s in why) or "mid-run points are not annealed"
    note = (f"Fits use the {len(frame)} val-loss points along {frame['run'].nunique()} runs after "
            f"warmup ({len(val) - len(after)} warmup points dropped), grouped by run for the "
            f"bootstrap, because some arm has fewer than {MIN_BUDGETS} budgets (budgets per arm: "
            f"{few}). Caveat: {caveat} (Hagele et al. 2024), so these laws overstate the loss "
            "a run annealed at that compute would reach.")
    display = val.assign(used=val.index.isin(after.index))
    return FitPoints(frame, _display(display), "curve", note)


def _display(points: pd.DataFrame) -> pd.DataFrame:
    out = points[["run", "label", "flops", "loss", "used"]].rename(columns={"label": "arm"})
    return out.reset_index(drop=True)
