"""Test-time augmentation and checkpoint ensembles as plain modules that return logits (log of mean probs)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _log_mean_probs(logit_list: list[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    probs = torch.stack([F.softmax(x.float(), dim=-1) for x in logit_list])
    w = torch.ones(len(logit_list)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = (w / w.sum()).to(probs.device).view(-1, *([1] * (probs.dim() - 1)))
    # Log of the averaged probabilities: argmax is the averaged prediction, softmax gives the probabilities back.
    return torch.log((probs * w).sum(0).clamp_min(1e-12))


def checked_scales(scales: Sequence[float]) -> tuple[float, ...]:
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    return tuple(float(s) for s in scales)


def tta_logits(net: nn.Module, images: torch.Tensor, hflip: bool = True, scales: Sequence[float] = (1.0,)
               ) -> torch.Tensor:
    """`net`'s softmax probabilities averaged over horizontal flips and input scales (resized with bilinear
    interpolation; scale 1.0 is the input as given), as logits (log of the mean)."""
    outs = []
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        outs.append(net(x))
        if hflip:
            outs.append(net(x.flip(-1)))
    return _log_mean_probs(outs)


class TTA(nn.Module):
    """`tta_logits` as a module around `net`."""

    def __init__(self, net: nn.Module, hflip: bool = True, scales: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        self.net, self.hflip, self.scales = net, bool(hflip), checked_scales(scales)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.net, images, self.hflip, self.scales)


class Ensemble(nn.Module):
    """Weighted average of the members' softmax probabilities (members: classifiers returning logits)."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if weights is not None and len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        self.members = nn.ModuleList(members)
        self.weights = list(weights) if weights is not None else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _log_mean_probs([m(images) for m in self.members], self.weights)
