"""The classification losses of the paper: softmax or sigmoid cross-entropy, with optional label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(targets: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Dense (B, num_classes) float targets, smoothed, from integer labels (B,), multi-label class lists (B, L)
    padded with negative numbers (multi-hot), or already-soft (mixup) float targets."""
    if targets.dim() == 1:
        targets = F.one_hot(targets, num_classes).float()
    elif not targets.is_floating_point():  # class lists: the padding lands in an extra column, then dropped
        padded = targets.where(targets >= 0, num_classes)
        targets = torch.zeros(len(targets), num_classes + 1, device=targets.device).scatter_(1, padded, 1.0)
        targets = targets[:, :num_classes]
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return targets


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, kind: str = "softmax", label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean over the batch of softmax cross-entropy, or of sigmoid cross-entropy summed over classes.

    The sigmoid form is big_vision's `sigmoid_xent` (the paper's JFT pre-training loss): independent
    binary cross-entropies, summed over classes so its scale does not shrink with the class count.
    """
    logits = logits.float()  # bf16 logits lose too much precision in log-sum-exp
    dense = soft_targets(targets, logits.shape[-1], label_smoothing).float()
    if kind == "softmax":
        return -(dense * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    if kind == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, dense, reduction="none").sum(-1).mean()
    raise ValueError(f"unknown loss {kind!r}; expected 'softmax' or 'sigmoid'")
