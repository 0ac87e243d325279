"""Image classification system: a timm network, a criterion, metrics and optimisation from config."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from src.data import keys
from src.models.optim import configure


class ClassificationSystem(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        criterion: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # Partials are not checkpoint-safe hyperparameters (weights-only loading); the Hydra config keeps them.
        self.save_hyperparameters(ignore=["net", "criterion", "optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = net
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro"), "f1": MulticlassF1Score(num_classes, average="macro")}
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:  # every image in the batch was unreadable: skip the step
            return None
        logits = self(batch[keys.IMAGE])
        loss = self.criterion(logits, batch[keys.LABEL])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def _eval_step(self, batch: dict | None, metrics: MetricCollection, stage: str) -> None:
        if batch is None:
            return
        logits = self(batch[keys.IMAGE])
        loss = nn.functional.cross_entropy(logits, batch[keys.LABEL])
        metrics.update(logits, batch[keys.LABEL])
        self.log(f"{stage}/loss", loss, batch_size=logits.shape[0])
        self.log_dict(metrics, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def configure_optimizers(self):
        return configure(self, self.optimizer_factory, self.scheduler_factory)
