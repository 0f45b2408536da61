"""Published numbers our findings sit next to: the Kimi K2 report and the works it builds on.

Kimi K2 report (arXiv 2507.20534): section 2.3 ablations (sparsity law, attention heads, dense
layers, expert grouping) and Algorithm 1 (MuonClip / QK-Clip); Moonlight (arXiv 2502.16982) and
Wen et al. 2025 for Muon vs AdamW. Numbers as collected in FACTS.md ("Kimi K2 ablations to
reproduce at small scale"). They are text for the report, never inputs to a computation: K2 ran
at 1e20-1e21 FLOPs, far above what the harness runs.
"""

from __future__ import annotations

from typing import Any

from analysis.points import same_value

K2 = "K2 (arXiv 2507.20534, §2.3)"
K2_SPARSITY = {(48, 8): 1.69, (48, 16): 1.39, (48, 32): 1.15}
"""K2 report §2.3: at val loss 1.5, sparsity 48 needs these times fewer FLOPs than 8, 16, 32."""
_SPARSITY = (f"{K2}, 8 active + 1 shared experts, 1e20-1e21 FLOPs: at val loss 1.5 sparsity 48 "
             "needs 1.69x / 1.39x / 1.15x fewer FLOPs than sparsity 8 / 16 / 32")
K2_MONOTONE = f"{K2}: increasing sparsity consistently lowers training and validation loss"
_MOONLIGHT = ("Moonlight (arXiv 2502.16982), dense 399M-1.5B: Muon needs ~52% of AdamW's FLOPs "
              "(~1.9x); Wen et al. 2025, both tuned: 1.4x at 0.1B, 1.1x at 1.2B")
_CLIP_LOSS = ("K2 (arXiv 2507.20534): QK-Clip (tau = 30, 0.5B-active/3B MoE) had negligible loss "
              "impact")
_GROUPS = f"{K2}: flat router, no expert grouping (DeepSeek-V3: 8 groups, 4 kept)"
REFERENCES: dict[str, str] = {
    "sparsity": _SPARSITY,
    "model.moe.n_routed_experts": _SPARSITY,
    "model.attention.n_heads": (f"{K2}, iso-token at 1.2e20-9.0e20 FLOPs: doubling heads lowered "
                                "val loss only 0.5%-1.2%, for +83% inference FLOPs at 128k"),
    "model.first_k_dense": f"{K2}: one dense first layer (DeepSeek-V3: 3) is enough for stability",
    "model.moe.n_groups": _GROUPS,
    "model.moe.topk_groups": _GROUPS,
    "arm": _MOONLIGHT,
    "optim.name": _MOONLIGHT,
}
"""Published numbers by arm column (FACTS.md, 'Kimi K2 ablations'); text, never computed on."""
K2_LOGITS = ("K2 (arXiv 2507.20534): plain Muon on a 9B-active MoE pushed max logits past 1000 "
             "within ~15k steps; MuonClip (tau = 100) kept them at 100, decaying after ~30% of "
             "training")
K2_CLIPPED = "K2 (arXiv 2507.20534): 12.7% of heads triggered QK-Clip in the first 70k steps"


def reference(column: str, arm: Any = None, baseline: Any = None) -> str | None:
    """The published number to put next to a comparison of ``arm`` with ``baseline``."""
    if column == "sparsity":
        for (a, b), ratio in K2_SPARSITY.items():
            if same_value(arm, a) and same_value(baseline, b):
                return (f"{K2}: at val loss 1.5, sparsity {a} needs {ratio}x fewer FLOPs than "
                        f"sparsity {b}")
    if column == "arm" and {str(arm), str(baseline)} == {"muon", "muonclip"}:
        return _CLIP_LOSS
    return REFERENCES.get(column)
