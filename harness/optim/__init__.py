"""Optimizers: Muon (batched Newton-Schulz, Moonlight scaling), QK-Clip, and param groups.

Sources: KellerJordan/Muon; Moonlight, arXiv 2502.16982; Kimi K2 report, arXiv 2507.20534.
"""

from harness.optim.build import (
    CombinedOptimizer,
    build_optimizer,
    describe_groups,
    muon_of,
    split_params,
)
from harness.optim.muon import (
    Muon,
    muon_update,
    newton_schulz,
    newton_schulz_sharded,
    update_scale_factor,
)
from harness.optim.qk_clip import qk_clip_

__all__ = [
    "CombinedOptimizer",
    "Muon",
    "build_optimizer",
    "describe_groups",
    "muon_of",
    "muon_update",
    "newton_schulz",
    "newton_schulz_sharded",
    "qk_clip_",
    "split_params",
    "update_scale_factor",
]
