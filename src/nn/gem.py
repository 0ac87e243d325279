"""Generalized-mean (GeM) pooling (Radenović et al. 2018); timm has no GeM layer."""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """((1/|X|) sum x^p)^(1/p) over the spatial dims; p learnable (init 3). p=1 is average pooling, p->inf max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C]
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"
