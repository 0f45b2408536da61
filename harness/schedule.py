"""Learning-rate schedules as pure functions of the optimizer step.

- ``wsd``: linear warmup, constant, then a linear decay over the last ``decay_frac`` of steps
  (warmup-stable-decay; Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
  Fixed Training Durations"). Points on the stable phase are usable for curve fits after a
  cooldown; the final point is the compute-optimal one.
- ``cosine``: linear warmup then a half cosine to ``min_lr_frac`` (Loshchilov & Hutter 2017).
- ``constant``: linear warmup then flat.
"""

from __future__ import annotations

import math

from harness.config import TrainConfig


def warmup_steps(train: TrainConfig) -> int:
    """Warmup length in steps: ``warmup_steps`` when set, else a fraction of all steps."""
    if train.warmup_steps is not None:
        return min(train.warmup_steps, train.steps)
    return int(train.warmup_frac * train.steps)


def decay_start(train: TrainConfig) -> int:
    """``wsd``: the first step of the cooldown (``steps`` when ``decay_frac`` rounds to none)."""
    return train.steps - round(train.decay_frac * train.steps)


def lr_multiplier(train: TrainConfig, step: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based, the step being taken)."""
    total, warm = train.steps, warmup_steps(train)
    if step < warm:
        return (step + 1) / warm
    floor = train.min_lr_frac
    if train.schedule == "constant":
        return 1.0
    if train.schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    start = decay_start(train)
    if step < start:
        return 1.0
    progress = (step - start + 1) / (total - start)
    return floor + (1 - floor) * (1 - min(1.0, progress))
