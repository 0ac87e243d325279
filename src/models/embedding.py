"""Metric-learning system: an EmbeddingNet trained with weighted margin / pair losses.

Evaluation steps only embed; the RetrievalEvaluation callback searches and scores (Faiss, recall@k, mAP)."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import nn

from src.data import keys
from src.models.configure_optimizers import backbone_and_head_groups, configure


class EmbeddingSystem(L.LightningModule):
    """`losses`: name -> loss module taking (embeddings, labels); margin heads (ArcFace, CosFace, sub-center
    ArcFace from pytorch-metric-learning) keep their class weights inside, so the optimizer and checkpoints carry
    them. `loss_weights`: name -> weight (default 1). Backbone learning rate = lr * `backbone_lr_mult`."""

    inference_kind = "embedder"  # what src.inference serves it as (stored with every checkpoint)

    def __init__(
        self,
        net: nn.Module,
        losses: dict[str, nn.Module],
        optimizer: Callable,
        scheduler: Callable | None = None,
        loss_weights: dict[str, float] | None = None,
        backbone_lr_mult: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "losses", "optimizer", "scheduler"])
        self.net = net
        losses = {k: v for k, v in losses.items() if v is not None}  # `losses.<name>: null` drops one in config
        if not losses:
            raise ValueError("EmbeddingSystem needs at least one loss")
        self.losses = nn.ModuleDict(losses)
        unknown = set(loss_weights or {}) - set(losses)
        if unknown:
            raise KeyError(f"loss_weights names unknown losses {sorted(unknown)}; losses are {sorted(losses)}")
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in losses}
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def compute_losses(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = {name: loss(embeddings, labels) for name, loss in self.losses.items()}
        parts["loss"] = sum(self.loss_weights[n] * v for n, v in parts.items())
        return parts

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:
            return None
        emb = self.net.embed_raw(batch[keys.IMAGE]).float()  # losses in fp32 under mixed precision
        parts = self.compute_losses(nn.functional.normalize(emb, dim=-1), batch[keys.LABEL])
        bs = emb.shape[0]
        self.log_dict({f"train/loss_{n}": v for n, v in parts.items() if n != "loss"}, batch_size=bs)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=bs)
        return parts["loss"]

    def _embed_batch(self, batch: dict | None) -> dict | None:
        if batch is None:
            return None
        return {"embeddings": self(batch[keys.IMAGE]).float(), keys.LABEL: batch[keys.LABEL],
                keys.INDEX: batch[keys.INDEX]}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        return self._embed_batch(batch)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        return self._embed_batch(batch)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        return self._embed_batch(batch)

    def configure_optimizers(self):
        groups = backbone_and_head_groups(self, self.optimizer_factory.keywords.get("lr", 1e-3),
                                          self.hparams.backbone_lr_mult)
        return configure(self, self.optimizer_factory, self.scheduler_factory, params=groups)
