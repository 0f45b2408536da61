"""Every sentence fragment the report uses for a number, an interval or a verdict: one place.

``analysis.studies`` (findings) and ``analysis.claims`` (the summary) both word their results
with these functions, so an estimate that is not estimable reads the same everywhere and never
as a number.
"""

from __future__ import annotations

import math
from enum import StrEnum

from analysis.results import Estimate, Multiplier, MultiplierAt, PairedChange


class Verdict(StrEnum):
    """How a claim fares against a 95% interval (``analysis.claims``)."""

    AGREES = "agrees"
    DISAGREES = "disagrees"
    INCONCLUSIVE = "inconclusive"


NOT_ESTIMABLE = "not estimable"


def ci_text(lo: float, hi: float, digits: int = 2) -> str:
    """``(95% CI 1.30-1.55)``, or ``(no interval)`` when the bootstrap gave none."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "(no interval)"
    return f"(95% CI {lo:.{digits}f}-{hi:.{digits}f})"


def times(e: Estimate, digits: int = 2) -> str:
    """``1.42x (95% CI 1.30-1.55)``; ``not estimable (why)`` instead of a number."""
    if not e.estimable:
        return f"{NOT_ESTIMABLE} ({e.reason.removeprefix(NOT_ESTIMABLE + ': ') or 'no interval'})"
    return f"{e.value:.{digits}f}x (95% CI {e.lo:.{digits}f}-{e.hi:.{digits}f})"


def percent(e: Estimate) -> str:
    """``+2.62% (95% CI +1.10% to +4.14%)``; ``not estimable (why)`` instead of a number."""
    if not e.estimable:
        return f"{NOT_ESTIMABLE} ({e.reason.removeprefix(NOT_ESTIMABLE + ': ') or 'no interval'})"
    return f"{e.value:+.2%} (95% CI {e.lo:+.2%} to {e.hi:+.2%})"


JOINT_LAW = "the joint sparsity law"
"""``Multiplier.frontier`` of a multiplier read off the K2 joint law (one floor, one slope)."""


def multiplier_at(m: Multiplier, p: MultiplierAt) -> str:
    """``1.42x (95% CI ...) fewer FLOPs, 1.20x (...) less wall-clock at L* = 1.560``."""
    if p.why_missing:
        return f"no multiplier at L* = {p.L_star:.3f} ({p.why_missing})"
    text = f"{times(p.flops)} in FLOPs"
    if p.flops.estimable and math.isfinite(m.throughput_ratio):
        text += f", {times(p.wallclock)} in wall-clock"
    if m.frontier == JOINT_LAW:  # m_s does not depend on the target loss
        return f"{text} (the joint law's, the same at every L*)"
    return f"{text} at L* = {p.L_star:.3f}"


def fewer_or_more(value: float) -> str:
    """How to read a multiplier: above 1x the arm needs fewer FLOPs, below 1x more."""
    if not math.isfinite(value):
        return ""
    return "the arm needs fewer" if value >= 1 else f"the arm needs {1 / value:.2f}x more"


def paired_text(c: PairedChange) -> str:
    """The paired final-loss change at the largest budget, then over every pair, each with how
    its interval was made; pairs whose final losses are all equal (a setting that never acted,
    e.g. a QK-Clip threshold the logits never reached) say so instead of showing a zero-width
    interval."""
    if all(p.rel_change == 0 for p in c.pairs):
        return (f"{c.arm} vs {c.baseline}: the same final loss in all {len(c.pairs)} pairs, to "
                "the last digit (the setting changed nothing these runs computed)")
    mde = f"; MDE at 80% power {c.mde:.2%}" if math.isfinite(c.mde) else ""
    runs = f"{c.n_seeds} paired run{'s' * (c.n_seeds != 1)}"
    label = c.largest_label or c.largest_budget
    # a budget the conditions name (tokens=8M) reads as one; another setting (lr=0.02) as itself
    where = (f"the largest common budget ({label}, " if "tokens=" in label or not c.largest_label
             else f"{label} (")
    return (f"{c.arm} vs {c.baseline}: final loss {percent(c.largest)} at {where}{runs}; "
            f"{c.largest.method}{mde}); {percent(c.overall)} over all {len(c.pairs)} pairs "
            f"({c.overall.method})")


def boot_method(unit: str, n_boot: int, n_failed: int) -> str:
    """``bootstrap of runs within each arm, 200 replicates, 3% failed``."""
    share = n_failed / n_boot if n_boot else float("nan")
    return f"bootstrap of {unit}, {n_boot} replicates, {share:.0%} failed"
