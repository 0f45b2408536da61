"""Learning-rate schedules: shapes of wsd, cosine and constant."""

from __future__ import annotations

from itertools import pairwise

import pytest

from harness.config import TrainConfig
from harness.schedule import lr_multiplier, warmup_steps


def curve(**kw: object) -> list[float]:
    tc = TrainConfig(tokens=100 * 1024, batch_tokens=1024, seq_len=64, **kw)  # 100 steps
    return [lr_multiplier(tc, s) for s in range(tc.steps)]


def test_wsd_warms_up_holds_then_decays_to_floor() -> None:
    lr = curve(schedule="wsd", warmup_frac=0.1, decay_frac=0.2, min_lr_frac=0.1)
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lr[10:80])
    assert all(a > b for a, b in pairwise(lr[80:]))
    assert lr[-1] == pytest.approx(0.1)


def test_cosine_is_monotone_after_warmup_and_ends_at_floor() -> None:
    lr = curve(schedule="cosine", warmup_frac=0.05, min_lr_frac=0.0)
    assert all(a >= b for a, b in pairwise(lr[5:]))
    assert lr[50] == pytest.approx(0.5, abs=0.05)
    assert lr[-1] < 0.01


def test_warmup_steps_override_fraction_and_constant_stays_flat() -> None:
    tc = TrainConfig(tokens=100 * 1024, batch_tokens=1024, seq_len=64, warmup_steps=4,
                     warmup_frac=0.5)
    assert warmup_steps(tc) == 4
    lr = curve(schedule="constant", warmup_steps=4)
    assert lr[3] == 1.0 and set(lr[4:]) == {1.0}
