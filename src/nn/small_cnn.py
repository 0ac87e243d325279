"""Small convolutional classifiers for tiny images (28-32 px: Fashion-MNIST, MNIST, CIFAR-sized crops).

ImageNet backbones throw away resolution at once (a stride-2 stem plus a max-pool: a 28 px image is 7 px after the
stem), which is why MobileNetV3-small from scratch stays near 0.81 on Fashion-MNIST after 3 epochs. The nets
here keep full resolution in the first stage and halve it only between stages, as the VGG/ResNet-9 style
networks that lead the small-image benchmarks do (Fashion-MNIST's own benchmark: VGG-like + BN ~0.94).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Sequential):
    """`depth` 3x3 conv-BN-ReLU layers; with `residual`, layers 2.. form a residual branch over layer 1."""

    def __init__(self, cin: int, cout: int, depth: int, residual: bool) -> None:
        super().__init__(_conv_bn(cin, cout), *[_conv_bn(cout, cout) for _ in range(depth - 1)])
        self.residual = residual and depth > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x)
        if len(self) == 1:
            return x
        y = x
        for layer in list(self)[1:]:
            y = layer(y)
        return x + y if self.residual else y


class SmallCNN(nn.Module):
    """Stages of 3x3 conv-BN-ReLU at full input resolution, then 1/2, 1/4, ...; 2x2 max-pool between stages;
    global average pooling, dropout and a linear classifier. Returns logits [B, num_classes].

    `widths` sets the channels of each stage (its length the number of stages), `depth` the conv layers per
    stage; `residual=True` adds a skip over layers 2.. of each stage (ResNet-9 style). `num_classes=0` returns
    the pooled features (timm's `num_classes=0` contract; `num_features` holds their size)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (32, 64, 128),
                 depth: int = 2, residual: bool = False, drop_rate: float = 0.0) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or depth < 1 or any(w < 1 for w in widths):
            raise ValueError(f"need at least one stage, depth >= 1 and positive widths, got {widths}, {depth}")
        stages, cin = [], in_chans
        for i, w in enumerate(widths):
            if i > 0:
                stages.append(nn.MaxPool2d(2))
            stages.append(_Stage(cin, w, depth, residual))
            cin = w
        self.features = nn.Sequential(*stages)
        self.num_features = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.features(x)).flatten(1)))
