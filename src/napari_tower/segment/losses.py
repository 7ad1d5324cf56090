"""Segmentation losses shared by the class heads (`finetune`) and the shape-aware instance heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy + soft Dice over annotated pixels; targets 0 = unannotated (no gradient).

    A pixel of weight 0 is unannotated too (e.g. outside the regions a user corrected): it enters neither term.

    `logits` (N, K, *spatial) and `targets`, `weights` (N, *spatial): planes (2D) or volumes (3D).
    """
    logits = logits.float()
    spatial = (0, *range(2, logits.ndim))  # every axis but the class axis
    annotated = (targets > 0).float() * weights
    cls = (targets - 1).clamp(min=0)
    ce = F.cross_entropy(logits, cls, reduction="none")
    ce = (ce * annotated).sum() / annotated.sum().clamp(min=1.0)
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(cls, logits.shape[1]).movedim(-1, 1).float()
    mask = (annotated > 0).float()[:, None]
    inter = (probs * onehot * mask).sum(dim=spatial)
    denom = ((probs + onehot) * mask).sum(dim=spatial)
    present = onehot.mul(mask).sum(dim=spatial) > 0
    dice = (2 * inter + 1) / (denom + 1)
    dice_loss = 1 - dice[present].mean() if present.any() else logits.sum() * 0
    return ce + dice_loss


__all__ = ["segmentation_loss"]
