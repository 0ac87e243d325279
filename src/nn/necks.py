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


class LinearNeck(nn.Module):
    """Linear(in, dim) that starts geometry-preserving, for fine-tuning pretrained features: `init="identity"`
    (dim == in: step 0 embeds exactly the pooled backbone features) or `"orthogonal"` (dim <= in: a
    semi-orthogonal map, distances kept up to the dropped directions). A linear probe with this neck starts
    at the zero-shot model instead of a random projection of it. `trainable=False` keeps the map fixed: with few
    training classes a learnt 1280 x 1280 map fits them and bends the space the unseen classes live in."""

    def __init__(self, in_features: int, dim: int | None = None, init: str = "identity", bias: bool = False,
                 trainable: bool = True) -> None:
        super().__init__()
        dim = in_features if dim is None else int(dim)
        self.fc = nn.Linear(in_features, dim, bias=bias)
        with torch.no_grad():
            if init == "identity":
                if dim != in_features:
                    raise ValueError(f"LinearNeck init='identity' needs dim == in_features ({in_features}), got {dim};"
                                     " use init='orthogonal' for a smaller embedding")
                self.fc.weight.copy_(torch.eye(dim))
            elif init == "orthogonal":
                if dim > in_features:
                    raise ValueError(f"LinearNeck init='orthogonal' needs dim <= in_features ({in_features})")
                nn.init.orthogonal_(self.fc.weight)
            else:
                raise ValueError(f"LinearNeck init must be 'identity' or 'orthogonal', got {init!r}")
            if bias:
                self.fc.bias.zero_()
        self.fc.requires_grad_(trainable)
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
