"""Embedding network: timm backbone -> pooling (GeM) -> neck (BNNeck, or a geometry-preserving LinearNeck for
pretrained fine-tuning) -> L2-normalised embedding."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from src.nn.backbones import set_last_stride_one
from src.nn.freezing import BackboneFreezing
from src.nn.gem import GeM
from src.nn.necks import BNNeck


class EmbeddingNet(BackboneFreezing):
    """`backbone` follows timm's contract (create it with `num_classes=0, global_pool=''`).
    `forward` returns L2-normalised embeddings; `embed_raw` the neck output before normalisation."""

    def __init__(self, backbone: nn.Module, embedding_dim: int | None = 512, pool: nn.Module | None = None,
                 last_stride_one: bool = False, dropout: float = 0.0, grad_checkpointing: bool = False,
                 neck: Callable[..., nn.Module] | None = None, freeze_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        if last_stride_one:
            set_last_stride_one(backbone)
        if grad_checkpointing:
            # Recompute block activations in backward instead of storing them: B5-B7 at native size with
            # 32-crop P x K batches need ~4x less activation memory (experiments/grad_checkpointing).
            if not hasattr(backbone, "set_grad_checkpointing"):
                raise ValueError(f"model.net.grad_checkpointing: {type(backbone).__name__} has no "
                                 "set_grad_checkpointing() (timm models do)")
            backbone.set_grad_checkpointing(True)
        self.pool = pool if pool is not None else GeM()
        # `neck`: a partial taking (in_features, dim), e.g. LinearNeck; default BNNeck (training from scratch).
        if neck is None:
            self.neck = BNNeck(backbone.num_features, embedding_dim, dropout=dropout)
        else:
            self.neck = neck(backbone.num_features, embedding_dim)
        self.embedding_dim = self.neck.out_features
        # Small P x K batches give noisy BatchNorm statistics: `freeze_bn` keeps the backbone's pretrained
        # running statistics (its BN layers stay in eval mode; their affine weights still train).
        self.freeze_bn = freeze_bn
        self.backbone_frozen = False

    def embed_raw(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(images)
        return self.neck(self.pool(feats))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_raw(images), dim=-1)
