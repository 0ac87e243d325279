"""Classifier for fine-tuning a pretrained backbone: pooled backbone features -> dropout -> one linear head.

Split into `backbone` and `head` (unlike a timm model with its classifier inside) so that a linear probe can be
written into `head` before training (src/callbacks/probe_head.py), the backbone can be frozen for a warm-up
(src/callbacks/backbone_warmup.py) and get its own learning rate (ClassificationSystem.backbone_lr_mult)."""

from __future__ import annotations

import torch
from torch import nn

from src.nn.freezing import BackboneFreezing


class ClassifierNet(BackboneFreezing):
    """`backbone` follows timm's contract with its classifier removed (`num_classes=0`, `global_pool="avg"`):
    `backbone(images)` -> pooled features [B, backbone.num_features]. `forward` returns logits [B, num_classes]."""

    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.0, freeze_bn: bool = False) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"model.net.num_classes must be a positive int, got {num_classes!r}")
        if not hasattr(backbone, "num_features"):
            raise ValueError(f"model.net.backbone: {type(backbone).__name__} has no num_features (timm contract)")
        self.backbone = backbone
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.num_classes = num_classes
        # Small batches of a user's few images give noisy BatchNorm statistics, and the probe written into
        # the head was fitted on the pretrained statistics: `freeze_bn` keeps them (affine weights still train).
        self.freeze_bn = freeze_bn
        self.backbone_frozen = False

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features [B, num_features]: what the head (and a linear probe) sees."""
        feats = self.backbone(images)
        if feats.dim() != 2:
            raise ValueError(f"model.net.backbone must return pooled features [B, C] (timm num_classes=0, "
                             f"global_pool='avg'), got shape {tuple(feats.shape)}")
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(images)))

