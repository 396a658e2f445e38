"""--loss_scale's weighted loss from whole logits, where the chunked loss is off (trainer.SftTrainer._scaled_loss):
each position's float32 cross-entropy times its target's weight (loss_scale.py), summed, over the number of targets
(chunked_loss.chunked_cross_entropy weighs its chunks the same way)."""

from __future__ import annotations

import torch
from torch import nn

from vlft.data.encode import IGNORE_INDEX
from vlft.train.chunked_loss import next_token_scales, next_token_targets


def scaled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, loss_scale: torch.Tensor) -> torch.Tensor:
    """chunked_cross_entropy's weighted loss from whole logits (B, L, V): every position's float32 cross-entropy
    times its weight, summed, over the number of targets (where the chunked loss is off)."""
    targets = next_token_targets(labels).flatten()
    losses = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=IGNORE_INDEX,
                                         reduction="none")
    scales = next_token_scales(loss_scale.to(losses.device, torch.float32)).flatten()
    return (losses * scales).sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)
