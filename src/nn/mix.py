"""CutMix (Yun et al. 2019) and Mixup (Zhang et al. 2018) on a batch, for hard or soft targets.

Own code rather than timm.data.Mixup / torchvision v2 CutMix: both build one-hot targets from int labels
themselves, while our batches may already carry soft targets (OOF soft labels) that must be mixed as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchMix(nn.Module):
    """Per batch: CutMix with probability `cutmix_prob`, else Mixup with probability `mixup_prob`, else nothing.
    Images are mixed with the batch in reverse order (as timm does); the target becomes
    `lam * t + (1 - lam) * t_flipped` where for CutMix `lam` is the exact fraction of pixels kept after the box
    is clipped to the image, so the label mixture always matches the pasted area and sums to 1."""

    def __init__(self, num_classes: int, cutmix_alpha: float = 1.0, mixup_alpha: float = 0.2,
                 cutmix_prob: float = 0.5, mixup_prob: float = 0.0) -> None:
        super().__init__()
        if cutmix_prob < 0 or mixup_prob < 0 or cutmix_prob + mixup_prob > 1 + 1e-9:
            raise ValueError(f"need cutmix_prob, mixup_prob >= 0 with sum <= 1, got {cutmix_prob}, {mixup_prob}")
        if (cutmix_prob > 0 and cutmix_alpha <= 0) or (mixup_prob > 0 and mixup_alpha <= 0):
            raise ValueError("alpha must be > 0 for an enabled mix (Beta(alpha, alpha))")
        self.num_classes = num_classes
        self.cutmix_alpha, self.mixup_alpha = float(cutmix_alpha), float(mixup_alpha)
        self.cutmix_prob, self.mixup_prob = float(cutmix_prob), float(mixup_prob)
        self.calls = 0  # batches seen (tests check it stays 0 outside training)
        self.last: dict = {}  # what the last call did: {"kind", "lam", "box"}; for tests and debugging

    def _as_probs(self, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if target.dim() == 1:
            return F.one_hot(target.long(), self.num_classes).to(dtype)
        return target.to(dtype)

    @staticmethod
    def _beta(alpha: float) -> float:
        return float(torch.distributions.Beta(alpha, alpha).sample())

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        probs = self._as_probs(target, torch.float32)
        r = float(torch.rand(()))
        if images.shape[0] < 2 or r >= self.cutmix_prob + self.mixup_prob:
            self.last = {"kind": "none", "lam": 1.0, "box": None}
            return images, probs
        flipped = images.flip(0)
        if r < self.cutmix_prob:
            h, w = images.shape[-2:]
            lam = self._beta(self.cutmix_alpha)
            cut = math.sqrt(1.0 - lam)  # box side ratio so that box area ~ (1 - lam) before clipping
            bh, bw = int(h * cut), int(w * cut)
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
            x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually pasted
            self.last = {"kind": "cutmix", "lam": lam, "box": (y0, y1, x0, x1)}
        else:
            lam = self._beta(self.mixup_alpha)
            images = images * lam + flipped * (1.0 - lam)
            self.last = {"kind": "mixup", "lam": lam, "box": None}
        return images, probs * lam + probs.flip(0) * (1.0 - lam)
