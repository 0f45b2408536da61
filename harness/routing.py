"""Routing health of one run: did the expert load balance, and did it stay balanced?

Small MoEs can collapse in their first steps: nearly every token goes to one expert, the
aux-loss-free bias (DeepSeek-V3 §2.1.2) then moves at its full rate in one direction for the
whole run, and some experts never see a token again. Such a run says nothing about sparsity, so
the trainer logs its health at the last step and the report flags it (docs/design.md, routing).

Imbalance is max / mean tokens per expert (1 = balanced), averaged over MoE layers: per step
(``moe/imbalance_peak``, the largest in a logging window) and over a logging window
(``moe/imbalance``). A run is **collapsed** when, at the end, an expert got no tokens in the last
logging window, or its load never balanced (window imbalance <= :data:`BALANCED` at some log), or
it ended unbalanced (mean window imbalance over the last quarter of training >
:data:`COLLAPSED`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BALANCED = 2.0
"""Window imbalance at or below which the load counts as balanced: no expert gets more than twice
its share."""
COLLAPSED = 4.0
"""Mean window imbalance over the last quarter above which a run ended collapsed."""
PREFIX = "routing/"
"""Prefix of the health metrics logged once, at a run's last step."""

Rows = list[tuple[int, dict[str, float]]]


@dataclass(frozen=True)
class RoutingHealth:
    """One run's routing health (see the module docstring for the rule)."""

    peak_imbalance: float  # largest per-step imbalance of the run
    balanced_step: int | None  # first logged step with window imbalance <= BALANCED, or None
    last_quarter_imbalance: float  # mean window imbalance over the last quarter of steps
    dead_experts: int  # experts with no tokens in the last logging window, summed over layers
    bias_saturation: float  # largest bias range over layers / (2 x travel); 1 = two experts'
    # biases moved apart at the full rate every step

    @property
    def collapsed(self) -> bool:
        return (self.dead_experts > 0 or self.balanced_step is None
                or self.last_quarter_imbalance > COLLAPSED)

    def metrics(self) -> dict[str, float]:
        """The ``routing/*`` metrics; ``balanced_step`` is left out when the load never
        balanced."""
        m = {
            f"{PREFIX}peak_imbalance": self.peak_imbalance,
            f"{PREFIX}last_quarter_imbalance": self.last_quarter_imbalance,
            f"{PREFIX}dead_experts": float(self.dead_experts),
            f"{PREFIX}bias_saturation": self.bias_saturation,
            f"{PREFIX}collapsed": float(self.collapsed),
        }
        if self.balanced_step is not None:
            m[f"{PREFIX}balanced_step"] = float(self.balanced_step)
        return m


def routing_health(rows: Rows, travel: float) -> RoutingHealth | None:
    """Health from a run's logged rows (step, metrics); None for a dense model (no
    ``moe/imbalance``). ``travel``: how far one bias could move over the steps trained (the sum
    of the bias steps, ``MoEConfig.bias_travel``; 0 = unknown)."""
    moe = [(s, m) for s, m in rows if "moe/imbalance" in m]
    if not moe:
        return None
    last_step = moe[-1][0]
    quarter = [m["moe/imbalance"] for s, m in moe if s >= 0.75 * last_step]
    balanced = next((s for s, m in moe if m["moe/imbalance"] <= BALANCED), None)
    peak = max(m.get("moe/imbalance_peak", m["moe/imbalance"]) for _, m in moe)
    ranges = [v for k, v in moe[-1][1].items() if k.startswith("moe/bias_range/")]
    # two biases moving apart at the full rate every step end 2 x travel apart
    saturation = max(ranges) / (2 * travel) if ranges and travel > 0 else math.nan
    return RoutingHealth(
        peak_imbalance=float(peak),
        balanced_step=balanced,
        last_quarter_imbalance=float(sum(quarter) / len(quarter)),
        dead_experts=int(moe[-1][1].get("moe/dead_experts", 0)),
        bias_saturation=float(saturation),
    )
