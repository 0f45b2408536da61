"""Verdicts: each sweep's declared claim (``analysis.claim`` in its YAML) against its results.

The claim says what it is about (``arms``, read against the study's baseline), what it
measures and where (``measure``: the compute multiplier at ``read_at``, or the paired
final-loss change at the largest common budget) and its kind:

- *effect* (``direction`` better / worse): agrees only when the 95% interval excludes no change
  (1x, 0%) on the claimed side; disagrees when it lies entirely on the other side.
- *no_penalty*: agrees only when the whole 95% interval lies inside the equivalence margin
  (1 -/+ margin x, or -/+ margin in loss): the interval form of two one-sided tests
  (Schuirmann 1987; a 95% interval inside the margin is TOST at alpha 0.025 per side);
  disagrees when the interval lies entirely outside the margin. When the interval leaves the
  margin only on the better side, the text says a penalty beyond the margin is ruled out (the
  non-inferiority half of the test) while the arm may be better by more than the margin; the
  rule declared is equivalence, so the verdict stays the rule's after the data are seen.

Anything else is *inconclusive*, and so is, where the spec's ``collapsed`` rule says so (the
default for sparsity studies), a claim on an arm (or against a baseline) where most runs' routing
collapsed (:mod:`harness.routing`: such runs say nothing about the experts); an estimate that is
not estimable; and, unless the
spec says ``edge: allow``, a claim read on a cell whose best ``best_of`` value sits at the edge
of its own grid. Every row also gives the paired final-loss change at the largest budget,
the minimum detectable effect and the seeds a design like this one needs to detect the
published effect at 80% power (``analysis.inference``). Published claims are text from the
sweep files; they never enter a computation other than the seeds-needed arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.inference import POWER_FACTOR, seeds_needed
from analysis.results import Estimate, Evidence, Logits
from analysis.wording import Verdict, multiplier_at, paired_text, percent, times
from harness.config.sweep import ClaimSpec

CAP_SLACK = 1.25
"""A clipped arm holds its cap when its late max logit is at most 1.25 tau (module docs)."""


@dataclass(frozen=True)
class Headline:
    """One row of the report's summary table."""

    study: str
    claim: str
    ours: str
    beside: str
    power: str
    verdict: Verdict
    reason: str
    differ: str


def interval_verdict(claim: ClaimSpec, lo: float, hi: float) -> tuple[Verdict, str]:
    """The verdict rule of the module docstring on a 95% interval [lo, hi]."""
    mult = claim.measure == "multiplier"
    null = 1.0 if mult else 0.0
    if claim.kind == "no_penalty":
        band = (1 - claim.margin, 1 + claim.margin) if mult else (-claim.margin, claim.margin)
        shown = (f"{band[0]:.2f}-{band[1]:.2f}x" if mult
                 else f"+/-{claim.margin:.1%}")
        if band[0] <= lo and hi <= band[1]:
            return Verdict.AGREES, f"the whole interval lies inside the margin {shown}"
        if _only_better_side(mult, band, lo, hi):
            return _better_side(mult, band, lo, hi, null, shown)
        if hi < band[0] or lo > band[1]:
            return Verdict.DISAGREES, f"the interval lies entirely outside the margin {shown}"
        return Verdict.INCONCLUSIVE, f"the interval crosses the margin {shown}"
    # a multiplier above 1x and a loss change below 0 are both "better"
    high = (claim.direction == "better") == mult
    right, wrong = (lo > null, hi < null) if high else (hi < null, lo > null)
    where, size = ("1x" if mult else "0%"), _size_note(claim, lo, hi)
    if right:
        return Verdict.AGREES, f"the interval excludes {where} on the claimed side{size}"
    if wrong:
        return Verdict.DISAGREES, f"the interval lies entirely on the other side of {where}{size}"
    return Verdict.INCONCLUSIVE, f"the interval includes {where} (no change){size}"


def _only_better_side(mult: bool, band: tuple[float, float], lo: float, hi: float) -> bool:
    """A no-penalty interval that leaves its margin only on the better side (a multiplier above
    1 + margin, a loss change below -margin)."""
    if mult:
        return lo > band[0] and hi > band[1]
    return hi < band[1] and lo < band[0]


def _better_side(mult: bool, band: tuple[float, float], lo: float, hi: float, null: float,
                 shown: str) -> tuple[Verdict, str]:
    """The declared rule's verdict on an interval that leaves the margin only on the better
    side, said so: a penalty beyond the margin is ruled out (the non-inferiority half of the
    two one-sided tests holds), equivalence is not shown."""
    fmt = (lambda v: f"{v:.2f}x") if mult else (lambda v: f"{v:+.1%}")
    edge, other = (band[1], band[0]) if mult else (band[0], band[1])
    beyond = lo > band[1] if mult else hi < band[0]
    better = lo > null if mult else hi < null
    benefit = "; the interval excludes no change: the arm is better" if better else ""
    where = (f"lies entirely beyond the margin's better edge ({fmt(edge)})" if beyond
             else f"crosses only the margin's better edge ({fmt(edge)})")
    return (Verdict.DISAGREES if beyond else Verdict.INCONCLUSIVE,
            f"the interval {where}: a penalty beyond {fmt(other)} is ruled out{benefit}; "
            f"the declared rule asks for equivalence within {shown}")


def _size_note(claim: ClaimSpec, lo: float, hi: float) -> str:
    """Where the published effect lies against the interval: the verdict judges direction, this
    says whether the size matches (empty when the claim declares no published value)."""
    p = claim.published
    if p is None:
        return ""
    shown = f"{p:.2f}x" if claim.measure == "multiplier" else f"{p:+.1%}"
    place = "inside" if lo <= p <= hi else "below" if p < lo else "above"
    if claim.published_for:
        return (f"; the published {shown} is for {claim.published_for}, another comparison "
                f"(it lies {place} this interval)")
    return f"; the published {shown} lies {place} it"


def read_out(claim: ClaimSpec, ev: Evidence) -> Estimate | None:
    """The estimate the claim is judged on (the declared measure at the declared point)."""
    if claim.measure == "loss":
        return ev.change.largest if ev.change is not None else None
    if ev.multiplier is None or ev.multiplier.read is None:
        return None
    return ev.multiplier.read.flops


def _edges(claim: ClaimSpec, ev: Evidence) -> tuple[str, ...]:
    """The edge cells the read-out uses: every cell for a multiplier (the whole frontier),
    those at the largest budget for a loss change."""
    if claim.measure == "multiplier" or ev.change is None:
        return ev.edge_cells
    at = {p.condition for p in ev.change.pairs if p.budget == ev.change.largest_budget}
    return tuple(c for c in ev.edge_cells if c in at)


def collapsed_side(ev: Evidence) -> str | None:
    """Why the routing rules the evidence out (most runs of the arm or the baseline collapsed),
    or None."""
    for name, counts in zip((ev.arm, ev.baseline), ev.health, strict=True):
        if counts is not None and counts[1] and 2 * counts[0] < counts[1]:
            return (f"routing collapsed in {counts[1] - counts[0]} of {counts[1]} runs of "
                    f"{name}")
    return None


def health_text(ev: Evidence) -> str:
    """``routing healthy in 3/4 runs of E64, 4/4 of E2`` ('' without MoE curves)."""
    sides = zip((ev.arm, ev.baseline), ev.health, strict=True)
    parts = [f"{c[0]}/{c[1]} of {name}" for name, c in sides if c is not None]
    return f"routing healthy in {', '.join(parts)} runs" if parts else ""


def judge(claim: ClaimSpec, ev: Evidence, edge: str = "inconclusive",
          collapsed: str = "inconclusive") -> tuple[Verdict, str]:
    """Verdict and its reason for one claimed arm (module docstring); ``edge`` and
    ``collapsed`` are the spec's rules for grid edges and collapsed routing."""
    verdict, why = _judge(claim, ev, edge, collapsed)
    health = health_text(ev)
    return verdict, f"{why}; {health}" if health else why


def _judge(claim: ClaimSpec, ev: Evidence, edge: str, collapsed: str) -> tuple[Verdict, str]:
    side = collapsed_side(ev) if collapsed == "inconclusive" else None
    if side is not None:
        return Verdict.INCONCLUSIVE, f"{side}: not evidence about the experts"
    est = read_out(claim, ev)
    edges = _edges(claim, ev)
    at_edge = (f"the best learning rate sits at the edge of its own grid in {len(edges)} cell"
               f"{'s' * (len(edges) != 1)} the read-out uses")
    if est is None or not est.estimable:
        why = "no estimate at the declared read-out point" if est is None else (
            est.reason or "not estimable")
        return Verdict.INCONCLUSIVE, f"{why}; {at_edge}" if edges else why
    verdict, why = interval_verdict(claim, est.lo, est.hi)
    if edges and edge == "inconclusive":
        return Verdict.INCONCLUSIVE, f"{verdict} on the interval ({why}), but {at_edge}"
    return verdict, why


def power_text(claim: ClaimSpec, ev: Evidence) -> str:
    """MDE of the read-out and the seeds needed for the published effect (or the margin)."""
    target = claim.published if claim.kind == "effect" else claim.margin
    what = "the published effect" if claim.kind == "effect" else "equivalence in the margin"
    equiv = claim.kind == "no_penalty"
    if claim.measure == "loss":
        c = ev.change
        if c is None or not math.isfinite(c.mde):
            return "no MDE (no noise estimate)"
        n = seeds_needed(c.noise.sd, target, equivalence=equiv) if target is not None else None
        seeds = f"; seeds for {what}: {n}" if n is not None else ""
        return f"MDE {c.mde:.2%} with {c.n_seeds} paired run(s) at that budget{seeds}"
    m = ev.multiplier
    est = m.read.flops if m is not None and m.read is not None else None
    if m is None or est is None or not est.estimable or not math.isfinite(est.se):
        return "no MDE (multiplier not estimable)"
    mde = math.exp(POWER_FACTOR * est.se)
    text = f"MDE {mde:.2f}x (or 1/{mde:.2f}x) with {m.n_seeds} seed(s)"
    if target is not None:
        effect = math.log(target) if not equiv else math.log(1 + target)
        n = seeds_needed(est.se * math.sqrt(m.n_seeds), effect, equivalence=equiv)
        text += f"; seeds for {what}: {n}" if n is not None else ""
    return text


def headlines(study: str, claim: ClaimSpec | None, evidence: list[Evidence],
              edge: str = "inconclusive", collapsed: str = "inconclusive") -> list[Headline]:
    """Summary rows of a multiplier or sparsity study: one per claimed arm present."""
    if claim is None:
        return []
    out = []
    for ev in evidence:
        verdict, why = judge(claim, ev, edge, collapsed)
        if claim.measure == "loss":
            ours = percent(ev.change.largest) if ev.change is not None else "no paired runs"
            if ev.multiplier is not None and ev.multiplier.read is not None:
                ours += (f" at the largest budget; compute multiplier (not the read-out) "
                         f"{multiplier_at(ev.multiplier, ev.multiplier.read)}")
        elif ev.multiplier is not None and ev.multiplier.read is not None:
            ours = multiplier_at(ev.multiplier, ev.multiplier.read)
        else:
            ours = "no multiplier at the declared read-out point"
        ours = f"{ev.arm} over {ev.baseline}: {ours}"
        beside = paired_text(ev.change) if ev.change is not None else "no paired runs"
        out.append(Headline(study, _claim_text(claim), ours, beside, power_text(claim, ev),
                            verdict, why, "" if verdict is Verdict.AGREES else claim.differ))
    return out


def _claim_text(claim: ClaimSpec) -> str:
    if claim.kind == "no_penalty":
        band = (f"{1 - claim.margin:.2f}-{1 + claim.margin:.2f}x" if claim.measure == "multiplier"
                else f"+/-{claim.margin:.1%} loss")
        return f"{claim.text} [no penalty, margin {band}]"
    unit = "compute multiplier" if claim.measure == "multiplier" else "final loss"
    return f"{claim.text} [effect: arm {claim.direction}, {unit}]"


def cap_headline(study: str, logits: Logits, differ: str) -> Headline:
    """The QK-Clip mechanism check (K2 Algorithm 1), per condition: with the clip the late max
    logit stays within 1.25 tau in every condition (the logged logit is the pre-clip forward
    pass, so a clipped run reads tau plus one step's growth), and without it the logit passes
    the largest tau in some condition (where the lr provokes it)."""
    capped = [a for a in logits.arms if math.isfinite(a.tau)]
    held = bool(capped) and all(a.late <= CAP_SLACK * a.tau for a in capped)
    grew = [b.condition for b in logits.arms if b.arm == logits.base and b.peak > max(
        (a.tau for a in capped if a.condition == b.condition), default=math.inf)]
    several = len({a.condition for a in logits.arms}) > 1
    where = f" (at {', '.join(grew)})" if grew and several else ""
    if not capped:
        verdict, why = Verdict.INCONCLUSIVE, "no clipped arm"
    elif held and grew:
        verdict, why = (Verdict.AGREES, f"without the clip logits pass tau{where}, with it they "
                        "stay within 1.25 tau")
    elif held:
        verdict, why = Verdict.INCONCLUSIVE, "the clip holds, but unclipped logits never passed tau"
    else:
        verdict, why = Verdict.DISAGREES, "clipped logits stayed above 1.25 tau"
    return Headline(study, "K2 Algorithm 1: plain Muon lets max attention logits grow; QK-Clip "
                    "caps them at tau [mechanism: late max logit <= 1.25 tau]",
                    "max attention logit (median over seeds; late = mean over the last quarter):"
                    f" {_logits_text(logits)}", "–", "–", verdict, why,
                    "" if verdict is Verdict.AGREES else differ)


def _logits_text(logits: Logits) -> str:
    """``at lr=0.02: none 33 peak, 23 late, ...; at lr=0.05: ...`` (no prefix for one condition)."""
    conditions = list(dict.fromkeys(a.condition for a in logits.arms))
    cells = []
    for c in conditions:
        arms = ", ".join(f"{a.arm} {a.peak:.0f} peak, {a.late:.0f} late"
                         for a in logits.arms if a.condition == c)
        cells.append(arms if len(conditions) == 1 else f"at {c}: {arms}")
    return "; ".join(cells)


def summary_table(rows: list[Headline]) -> str:
    """The report's summary as a markdown table (empty when no study has a headline)."""
    if not rows:
        return ""
    lines = ["| study | claim | read-out (declared point, 95% CI) | paired final-loss change "
             "(95% CI) | power | verdict | why it may differ |",
             "|---|---|---|---|---|---|---|"]
    for h in rows:
        cells = (h.study, h.claim, h.ours, h.beside, h.power, f"**{h.verdict}**: {h.reason}",
                 h.differ or "–")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


__all__ = ["Headline", "Verdict", "cap_headline", "headlines", "interval_verdict", "judge",
           "summary_table", "times"]
