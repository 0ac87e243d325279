"""TripletAngularMarginLoss (PP-ShiTuV2): batch-hard triplets in cosine space plus absolute bounds on the
anchor-positive and anchor-negative similarities. No library provides it, so it is written here.

For each anchor a with at least one positive and one negative in the batch:
    s_ap = min_{p: y_p = y_a, p != a} cos(a, p)      (hardest positive)
    s_an = max_{n: y_n != y_a} cos(a, n)             (hardest negative)
    l_rank = max(0, s_an - s_ap + margin)
    l_abs  = max(0, ap_value - s_ap) + max(0, s_an - an_value)      (only with add_absolute)
loss = mean(l_rank) + absolute_loss_weight * (mean(max(0, ap_value - s_ap)) + mean(max(0, s_an - an_value)))

PaddleClas' implementation fills the non-violating an-terms with ones instead of zeros; that only shifts the
loss value by a constant (no gradient), so gradients here are identical and the value is the plain hinge.
PaddleClas also counts the anchor itself as a positive, which is a no-op for the min unless the anchor has no
other positive; such anchors are skipped here instead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TripletAngularMarginLoss(nn.Module):
    def __init__(self, margin: float = 0.5, add_absolute: bool = True, absolute_loss_weight: float = 1.0,
                 ap_value: float = 0.8, an_value: float = 0.4, normalize: bool = True) -> None:
        super().__init__()
        self.margin, self.add_absolute, self.absolute_loss_weight = margin, add_absolute, absolute_loss_weight
        self.ap_value, self.an_value, self.normalize = ap_value, an_value, normalize

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings, dim=-1) if self.normalize else embeddings
        sim = x @ x.t()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(1) & neg.any(1)
        if not valid.any():
            return embeddings.sum() * 0.0  # no triplet in this batch: zero loss, graph kept for DDP
        big = torch.finfo(sim.dtype).max
        s_ap = sim.masked_fill(~pos, big).min(1).values[valid]
        s_an = sim.masked_fill(~neg, -big).max(1).values[valid]
        loss = F.relu(s_an - s_ap + self.margin).mean()
        if self.add_absolute:
            loss = loss + self.absolute_loss_weight * (F.relu(self.ap_value - s_ap).mean() + F.relu(s_an - self.an_value).mean())
        return loss
