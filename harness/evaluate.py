"""Evaluation of a trial's weights on its validation and test sets: the one loss the trainer logs
(``val/loss``, ``test/loss``) and ``harness rescore`` recomputes, so both give the same number
for the same weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from harness.config import TrialConfig
from harness.data import TokenData, eval_batches, val_batches

Batches = list[tuple[torch.Tensor, torch.Tensor]]
"""An evaluation set: batches of (inputs, targets), each (B, T) int64."""


def eval_sets(trial: TrialConfig, data: TokenData) -> tuple[Batches, Batches]:
    """The trial's (validation, test) sets, in batches of its micro-batch size."""
    tc = trial.train
    micro_bs = (tc.micro_batch_tokens or tc.batch_tokens) // tc.seq_len
    return (val_batches(data, tc.seq_len, trial.data.val_tokens, micro_bs),
            eval_batches(data.test, tc.seq_len, trial.data.eval_test_tokens, micro_bs, "test"))


def mean_loss(model: torch.nn.Module, forward: Callable[..., Any], batches: Batches,
              device: torch.device) -> float:
    """Mean cross-entropy (nats per token) of ``forward`` over ``batches`` of (inputs, targets)
    (B, T), ``model`` in eval mode, bf16 autocast on CUDA as in training: the one evaluation the
    trainer and ``harness rescore`` share, so both give the same number for the same weights."""
    return float(torch.stack(batch_losses(model, forward, batches, device)).mean())


@torch.no_grad()
def batch_losses(model: torch.nn.Module, forward: Callable[..., Any], batches: Batches,
                 device: torch.device) -> list[torch.Tensor]:
    """Each batch's mean cross-entropy (0-d tensors), as :func:`mean_loss` averages them; a
    multi-worker trial sums its ranks' shares of these."""
    model.eval()
    losses = []
    for x, y in batches:
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits, _ = forward(x.to(device))  # (B, T, V)
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten()))
    model.train()
    return losses
