"""Scaling-law fitters: one import point for the harness, its reports and its tests.

Every fitter returns a frozen dataclass with parameters, 95% bootstrap intervals (``ci``) and
goodness of fit (``gof``), and raises :class:`FitError` when the data do not identify the law.

- ``fit_power_law``: L = E + A C^-alpha, or L = A C^-alpha (``analysis.power_law``).
- ``fit_chinchilla``: Approach 3, L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022;
  Besiroglu et al. 2024), grid or variable projection (Czech et al. 2026)
  (``analysis.chinchilla``).
- ``fit_isoflop``: Approach 2, IsoFLOP parabolas and X*(C) = A C^alpha (Hoffmann et al. 2022;
  the Llama 3 paper) (``analysis.chinchilla``).
- ``fit_clark``: routed-LM law log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d
  (Clark et al. 2022) (``analysis.clark``).
- ``fit_sparsity_law`` and ``compute_multiplier``: FLOP ratios between arms (Kimi K2 report,
  arXiv 2507.20534) (``analysis.sparsity``).
- ``extrapolation_check``: fit without the largest-compute runs, predict them.
"""

from analysis.chinchilla import (
    ChinchillaFit,
    IsoFlopBudget,
    IsoFlopFit,
    fit_chinchilla,
    fit_isoflop,
    snap_budgets,
)
from analysis.clark import ClarkFit, fit_clark, saturating_experts
from analysis.fitcore import FitError, GoodnessOfFit, Interval
from analysis.power_law import (
    ExtrapolationCheck,
    PowerCurves,
    PowerLawFit,
    extrapolation_check,
    fit_power_curves,
    fit_power_law,
    refit_power_curves,
)
from analysis.sparsity import (
    FRONTIERS,
    FlopRatio,
    MultiplierCurve,
    SparsityLawFit,
    compute_multiplier,
    fit_sparsity_law,
)

__all__ = [
    "FRONTIERS",
    "ChinchillaFit",
    "ClarkFit",
    "ExtrapolationCheck",
    "FitError",
    "FlopRatio",
    "GoodnessOfFit",
    "Interval",
    "IsoFlopBudget",
    "IsoFlopFit",
    "MultiplierCurve",
    "PowerCurves",
    "PowerLawFit",
    "SparsityLawFit",
    "compute_multiplier",
    "extrapolation_check",
    "fit_chinchilla",
    "fit_clark",
    "fit_isoflop",
    "fit_power_curves",
    "fit_power_law",
    "fit_sparsity_law",
    "refit_power_curves",
    "saturating_experts",
    "snap_budgets",
]
