"""A frozen teacher for distillation: no gradients, always in eval mode (BN statistics and dropout fixed), even
when the LightningModule that uses it calls `.train()`."""

from __future__ import annotations

import torch
from torch import nn


class FrozenTeacher(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # a teacher in train mode would update BN running stats on student batches

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
