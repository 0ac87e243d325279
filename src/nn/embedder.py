"""Embedding network: timm backbone -> GeM -> BNNeck -> L2-normalised embedding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.nn.backbones import set_last_stride_one
from src.nn.gem import GeM
from src.nn.necks import BNNeck


class EmbeddingNet(nn.Module):
    """`backbone` follows timm's contract (create it with `num_classes=0, global_pool=''`).
    `forward` returns L2-normalised embeddings; `embed_raw` the neck output before normalisation."""

    def __init__(self, backbone: nn.Module, embedding_dim: int = 512, pool: nn.Module | None = None,
                 last_stride_one: bool = False, dropout: float = 0.0, grad_checkpointing: bool = False) -> None:
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
        self.neck = BNNeck(backbone.num_features, embedding_dim, dropout=dropout)
        self.embedding_dim = embedding_dim

    def embed_raw(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(images)
        return self.neck(self.pool(feats))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_raw(images), dim=-1)
