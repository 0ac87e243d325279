"""Focal loss (Lin et al. 2017) for multi-class logits, with hard or soft (mixed) targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """mean_i  sum_c  -alpha_c * t_ic * (1 - p_ic)^gamma * log p_ic.

    `target` is either class ids [B] (int) or a distribution [B, C] (CutMix/Mixup/soft labels); with gamma=0,
    alpha=None this is exactly cross-entropy (with `label_smoothing` applied the way torch applies it)."""

    def __init__(self, gamma: float = 2.0, alpha: list[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        # A buffer so .to(device) and checkpoints carry the class weights.
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32) if alpha is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[-1]
        if target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            target = F.one_hot(target.long(), num_classes).to(logits.dtype)
        elif target.shape != logits.shape:
            raise ValueError(f"soft target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}")
        if self.label_smoothing > 0:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        logp = F.log_softmax(logits.float(), dim=-1)
        weight = (1 - logp.exp()).pow(self.gamma) if self.gamma > 0 else 1.0
        loss = -(target * weight * logp)
        if self.alpha is not None:
            loss = loss * self.alpha
        return loss.sum(-1).mean()
