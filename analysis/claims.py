"""The published claim each study tests, and the one-line verdict the report's summary gives.

A study's headline reads its own tables (``analysis.studies``): the compute multiplier of an arm
over the baseline with its 95% run-bootstrap interval (``multipliers`` or ``sparsity_law``), or,
for the max-logit study, the peak logits per arm and the final-loss change of the clipped arms.
The verdict compares the interval with 1x in the direction the claim predicts; the claims and their
published numbers are text from FACTS.md ("Kimi K2 ablations") and never enter a computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd

from analysis.points import arm_label

if TYPE_CHECKING:
    from analysis.studies import Study

Expect = Literal["above", "below", "near"]
"""Where the claim puts the arm's multiplier over the baseline: > 1, < 1, or no real change."""


@dataclass(frozen=True)
class Claim:
    """A published finding a study tests: ``arms`` are read against the study's baseline."""

    claim: str
    expect: Expect
    arms: tuple[str, ...]
    differ: str  # why a small-scale run might not show it
    measure: Literal["multiplier", "loss"] = "multiplier"  # "loss": judged at equal tokens


@dataclass(frozen=True)
class Headline:
    """One row of the report's summary table."""

    study: str
    claim: str
    ours: str
    verdict: str
    differ: str


_SCALE = (
    "K2 ran at 1e20-1e21 training FLOPs; these runs are ~1e12, with a d_model-64 model, a few "
    "hundred optimizer steps and one or two seeds"
)
CLAIMS: dict[str, Claim] = {
    "sparsity": Claim(
        "K2 §2.3: at fixed active parameters, more experts (higher sparsity) lower the loss: "
        "sparsity 48 needs 1.15-1.69x fewer FLOPs than 32-8",
        "above",
        ("32", "64", "16"),
        f"{_SCALE}. With 2 active experts of up to 64 and short runs, the router has little time "
        "to specialise experts, and the expert load grows uneven with sparsity (dead experts at "
        "sparsity 16-32), so the extra experts are partly unused.",
    ),
    "arm": Claim(
        "Moonlight / K2: Muon trains with ~1.4-1.9x fewer FLOPs than AdamW at equal loss",
        "above",
        ("muon", "muonclip"),
        f"{_SCALE}. Each optimizer's learning rate is tuned on a 3-point grid only, and Wen et "
        "al. 2025 find the gain shrinks once AdamW is tuned as carefully.",
    ),
    "model.attention.n_heads": Claim(
        "K2 §2.3: doubling the heads (heads = 2 x layers) lowers val loss only 0.5-1.2%, iso-token",
        "above",
        ("8",),
        f"{_SCALE}. With fixed per-head dims, doubling the heads of a d_model-64 model adds ~44% "
        "training FLOPs, far more than at K2's size, and its heads are small (16 + 8 rope dims).",
        measure="loss",
    ),
    "model.first_k_dense": Claim(
        "K2: one dense first layer is enough (DeepSeek-V3 keeps three): no loss penalty",
        "near",
        ("1", "0"),
        f"{_SCALE}. K2's reason is training stability at scale, which short small runs do not "
        "stress.",
    ),
    "model.moe.n_groups": Claim(
        "K2: a flat router (no expert groups) works as well as DeepSeek-V3's group-limited one",
        "near",
        ("4", "8", "2"),
        f"{_SCALE}. Group-limited routing exists to cap cross-node traffic; with all experts on "
        "one device it only constrains the router.",
    ),
}
"""The claim each study's arm column tests (FACTS.md, "Kimi K2 ablations to reproduce")."""

LOGITS_CLAIM = (
    "K2 Algorithm 1: plain Muon lets max attention logits grow (past 1000 at 9B active); "
    "QK-Clip caps them at tau with negligible loss impact"
)
LOGITS_DIFFER = (
    f"{_SCALE}; logits only grow here at learning rates well above the tuned one, the regime "
    "the muonclip sweep chooses on purpose."
)


def verdict(expect: Expect, lo: float, hi: float) -> str:
    """Agreement of a 95% interval of a multiplier with the direction the claim predicts."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval"
    spans = lo <= 1.0 <= hi
    if expect == "near":
        return "agrees (interval spans 1x)" if spans else "disagrees (interval excludes 1x)"
    if spans:
        return "no detectable effect (interval spans 1x)"
    right = lo > 1.0 if expect == "above" else hi < 1.0
    return "agrees" if right else "disagrees"


def _multiplier_row(study: Study, label: str) -> pd.Series | None:
    """The arm's multiplier over the baseline: the joint law's, else the middle answered L*."""
    table = study.tables.get("sparsity_law")
    if table is not None and len(table):
        rows = table[table["arm"] == label]
        return rows.iloc[0].rename({"multiplier": "ratio"}) if len(rows) else None
    table = study.tables.get("multipliers")
    if table is None or not len(table):
        return None
    rows = table[(table["arm"] == label) & table["reason"].fillna("").eq("")]
    return rows.iloc[len(rows) // 2] if len(rows) else None


def _loss_change(study: Study, label: str,
                 multiplier: bool = False) -> tuple[str, float, float] | None:
    """Final val loss change of the arm over paired baseline runs (same tokens and settings):
    (text, min, max); the text says when no multiplier could be fitted."""
    table = study.tables.get("final_loss_changes")
    mine = table[table["arm"] == label] if table is not None and len(table) else None
    if mine is None or mine.empty:
        return None
    rel, base = mine["rel_change"], mine["baseline"].iloc[0]
    none = "" if multiplier else "; no multiplier could be fitted"
    text = (f"{label} vs {base} at equal tokens: final val loss {rel.mean():+.2%} "
            f"({rel.min():+.2%} to {rel.max():+.2%} over {len(rel)} paired runs{none})")
    return text, float(rel.min()), float(rel.max())


def loss_verdict(expect: Expect, lo: float, hi: float) -> str:
    """Agreement of the range of paired loss changes (arm over baseline) with the claim."""
    if expect == "near":
        return ("agrees (changes of both signs)" if lo <= 0.0 <= hi
                else "disagrees (every paired run moves the same way)")
    if lo <= 0.0 <= hi:
        return "no consistent effect (changes of both signs)"
    better = hi < 0.0  # lower loss than the baseline in every pair
    return "agrees" if better == (expect == "above") else "disagrees"


def _ratio_text(label: str, row: pd.Series, base: str) -> str:
    where = f" at L* = {row['L_star']:.3f}" if "L_star" in row and pd.notna(row["L_star"]) else ""
    return f"{label} over {base}: {row['ratio']:.2f}x ({row['lo']:.2f}-{row['hi']:.2f}){where}"


def multiplier_headlines(study: Study, column: str, base: str) -> list[Headline]:
    """Summary rows of a multiplier or sparsity study: one per claimed arm present."""
    claim = CLAIMS.get(column)
    if claim is None:
        return []
    out = []
    for value in claim.arms:
        label = arm_label(column, value)
        row = _multiplier_row(study, label)
        change = _loss_change(study, label, multiplier=row is not None)
        if claim.measure == "loss" and change is not None:
            ours, v = change[0], loss_verdict(claim.expect, *change[1:])
            if row is not None:
                ours += f"; compute multiplier {_ratio_text(label, row, base)}"
        elif row is not None:
            v = verdict(claim.expect, float(row["lo"]), float(row["hi"]))
            ours = _ratio_text(label, row, base)
        elif change is not None:
            ours, v = change[0], loss_verdict(claim.expect, *change[1:])
        else:
            continue
        out.append(Headline(study.name, claim.claim, ours, v,
                            "" if v.startswith("agrees") else claim.differ))
        if column == "sparsity":
            break  # the highest sparsity present speaks for the law
    return out


def logits_headline(study: Study, base: str) -> list[Headline]:
    """Summary row of the max-logit study: logits per arm, loss change of clipped arms.

    The logged max logit is the forward pass's, before that step's clip, so a clipped run reads
    tau plus one optimizer step's growth on the steps that trigger; the cap holds when the clipped
    arms' mean over the last quarter of training stays within 25% of tau.
    """
    logits = study.tables.get("max_logit")
    if logits is None or not len(logits):
        return []
    by_arm = logits.groupby("arm").agg(
        peak=("peak", "median"), late=("last_quarter_mean", "median"), tau=("tau", "first"))
    capped = by_arm[by_arm["tau"].notna()]
    held = bool(len(capped)) and bool((capped["late"] <= 1.25 * capped["tau"]).all())
    grew = bool(len(capped)) and base in by_arm.index and (
        by_arm.loc[base, "peak"] > capped["tau"].max())
    parts = [f"{arm} {r['peak']:.0f} peak, {r['late']:.0f} late" for arm, r in by_arm.iterrows()]
    changes = study.tables.get("final_loss_changes")
    loss = ""
    if changes is not None and len(changes):
        stats = changes.groupby("arm")["rel_change"].agg(["mean", "min", "max"])
        loss = f"; final val loss vs {base}: " + ", ".join(
            f"{arm} {r['mean']:+.2%} ({r['min']:+.2%} to {r['max']:+.2%})"
            for arm, r in stats.iterrows())
    if not len(capped):
        v = "no clipped arm"
    elif held and grew:
        v = "agrees: without the clip logits pass tau, with it they stay at tau"
    elif held:
        v = "partly: the clip holds, but unclipped logits never passed tau"
    else:
        v = "disagrees: clipped logits stayed above tau"
    ours = (f"max attention logit (median over runs; late = mean over the last quarter): "
            f"{', '.join(parts)}{loss}")
    return [Headline(study.name, LOGITS_CLAIM, ours, v,
                     "" if v.startswith("agrees") else LOGITS_DIFFER)]


def summary_table(headlines: list[Headline]) -> str:
    """The report's summary as a markdown table (empty when no study has a headline)."""
    if not headlines:
        return ""
    lines = ["| study | claim | here (95% interval) | verdict | why it may differ |",
             "|---|---|---|---|---|"]
    for h in headlines:
        cells = (h.study, h.claim, h.ours, h.verdict, h.differ or "–")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)

