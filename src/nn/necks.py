"""Embedding necks."""

from __future__ import annotations

import torch
from torch import nn


class BNNeck(nn.Module):
    """Linear(in, dim) + BatchNorm1d(dim) (Luo et al., "Bag of Tricks for ReID"): the BN bias is frozen so the
    embedding is centred, which suits cosine-margin heads."""

    def __init__(self, in_features: int, dim: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(x)))
