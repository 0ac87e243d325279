"""Image classification system: a timm network, a criterion, metrics and optimisation from config, plus the
training tricks of product/style recognition: CutMix/Mixup, soft targets, distillation from a frozen teacher,
TTA at test time, out-of-fold prediction files and a report (confusion matrix, per-class recall)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from src.data import keys
from src.losses.distillation import check_kd_alpha
from src.models.classification_report import confusion_figure, summarize, write_report
from src.models.held_out_predictions import HeldOutPredictions
from src.models.configure_optimizers import backbone_and_head_groups, configure
from src.models.teacher import Distillation
from src.nn.tta import checked_scales, tta_logits
from src.utils.media import figure_rgb, send_image

log = logging.getLogger(__name__)


class ClassificationSystem(L.LightningModule):
    """`criterion(logits, target)` must accept class ids [B] and distributions [B, C] (torch's
    CrossEntropyLoss and src.losses.focal.FocalLoss do): CutMix/Mixup and soft labels give distributions.

    batch_mix: module `(images, target) -> (images, target distribution)`, applied in training_step only.
    teacher: a frozen module or a zero-argument factory (Hydra `_partial_`), built in `setup('fit')` so loading
        the student for evaluation never needs the teacher's file; it is not a submodule (not in the student's
        checkpoint). loss = kd_alpha * KL_T(teacher || student) * T^2 + (1 - kd_alpha) * criterion.
    tta_hflip / tta_scales: average probabilities over flips/scales in val/test (e.g. set through src.eval's
        model_overrides).
    backbone_lr_mult: with a net that has a `backbone` (src.nn.classifier_net.ClassifierNet), the backbone's
        learning rate is the optimizer's lr times this (pretrained fine-tuning: e.g. 0.1); None: one rate for all.
    save_test_predictions: write softmax probabilities of the test set (by sample uid) to
        `<trainer.default_root_dir>/predictions/test_probs.{npz,csv}` (out-of-fold predictions of a fold run).
    """

    inference_kind = "classifier"  # what src.inference serves it as (stored with every checkpoint)

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        criterion: nn.Module | None = None,
        batch_mix: nn.Module | None = None,
        teacher: nn.Module | Callable[[], nn.Module] | None = None,
        kd_alpha: float = 0.5,
        kd_temperature: float = 4.0,
        tta_hflip: bool = False,
        tta_scales: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        save_test_predictions: bool = False,
        report_max_classes: int = 100,
        backbone_lr_mult: float | None = None,
    ) -> None:
        super().__init__()
        # Plain lists (not Hydra's ListConfig): hyperparameters must load under torch.load(weights_only=True).
        class_names = [str(c) for c in class_names] if class_names is not None else None
        tta_scales_ = [float(s) for s in tta_scales] if tta_scales is not None else None
        # Partials are not checkpoint-safe hyperparameters (weights-only loading); the Hydra config keeps them.
        self.save_hyperparameters(ignore=["net", "criterion", "optimizer", "scheduler", "batch_mix", "teacher"])
        check_kd_alpha(kd_alpha)
        if backbone_lr_mult is not None and not hasattr(net, "backbone"):
            raise ValueError(f"model.backbone_lr_mult needs a net with a backbone (ClassifierNet), got "
                             f"{type(net).__name__}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = net
        self.num_classes = num_classes
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.batch_mix = batch_mix
        # Plain attributes, not submodules: no teacher weights in the student's checkpoint or optimizer, and TTA
        # runs self.net itself (no second copy of its state-dict keys).
        self.distillation = Distillation(teacher, kd_alpha, kd_temperature) if teacher is not None else None
        tta_on = tta_hflip or tta_scales_
        self.tta = (bool(tta_hflip), checked_scales(tta_scales_ or (1.0,))) if tta_on else None
        self.class_names = list(class_names) if class_names is not None else None
        self.save_test_predictions = save_test_predictions
        metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro"), "f1": MulticlassF1Score(num_classes, average="macro")}
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # The confusion matrix is num_classes^2: kept for small label sets only (not AliProducts' 50k).
        self.test_confusion = MulticlassConfusionMatrix(num_classes) if num_classes <= report_max_classes else None
        self.test_report: dict | None = None
        self.test_predictions = HeldOutPredictions()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @property
    def teacher(self) -> nn.Module | None:
        return self.distillation.teacher if self.distillation is not None else None

    # --- training -------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.distillation is not None:
            self.distillation.build()

    def on_fit_start(self) -> None:
        if self.distillation is not None:
            self.distillation.ready(self.device)

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        images, target = batch[keys.IMAGE], batch.get(keys.SOFT_LABEL, batch[keys.LABEL])
        if self.batch_mix is not None:
            images, target = self.batch_mix(images, target)
        logits = self(images)
        losses = {"loss_ce": self.criterion(logits, target)}
        if self.teacher is not None:
            losses.update(self.distillation.losses(images, logits, losses["loss_ce"]))
        else:
            losses["loss"] = losses["loss_ce"]
        return losses

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:  # every image in the batch was unreadable: skip the step
            return None
        losses = self.compute_losses(batch)
        n = batch[keys.IMAGE].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=n)
        return losses["loss"]

    # --- evaluation -----------------------------------------------------------------------------------
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.net, images, *self.tta) if self.tta is not None else self(images)

    def _eval_step(self, batch: dict | None, metrics: MetricCollection, stage: str) -> torch.Tensor | None:
        if batch is None:
            return None
        logits = self.predict_logits(batch[keys.IMAGE])
        loss = F.cross_entropy(logits, batch[keys.LABEL])
        metrics.update(logits, batch[keys.LABEL])
        self.log(f"{stage}/loss", loss, batch_size=logits.shape[0])
        self.log_dict(metrics, prog_bar=stage == "val")
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_test_epoch_start(self) -> None:
        self.test_predictions.reset()
        self.test_report = None

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_metrics, "test")
        if logits is None:
            return
        if self.test_confusion is not None:
            self.test_confusion.update(logits, batch[keys.LABEL])
        if self.save_test_predictions:
            self.test_predictions.add(logits, batch[keys.INDEX], batch[keys.LABEL])

    def on_test_epoch_end(self) -> None:
        if self.test_confusion is not None:
            cm = self.test_confusion.compute().cpu().numpy()
            self.test_confusion.reset()
            self.test_report = {"confusion": cm.tolist(), **summarize(cm, self.class_names)}
            self._send_picture("test/confusion_matrix", lambda: figure_rgb(confusion_figure(cm, self.class_names)))
        if self.save_test_predictions and len(self.test_predictions):
            suffix = f"_rank{self.global_rank}" if self.trainer.world_size > 1 else ""
            self.test_predictions.write(Path(self.trainer.default_root_dir) / "predictions",
                                        self._test_uids(self.test_predictions.index()), suffix)

    def _test_uids(self, index: np.ndarray) -> list[str]:
        datasets = getattr(getattr(self.trainer, "datamodule", None), "datasets", None) or {}
        samples = getattr(datasets.get("test"), "samples", None)
        return [samples[i].uid for i in index] if samples is not None else [str(i) for i in index]

    # --- reports --------------------------------------------------------------------------------------
    def _send_picture(self, key: str, rgb: np.ndarray | Callable[[], np.ndarray]) -> None:
        """To the loggers that take images (TensorBoard, W&B); CSV loggers are skipped."""
        if getattr(self, "_trainer", None) is not None:
            send_image(self.loggers, key, rgb, self.global_step)

    def report_artifacts(self, out_dir: str | Path) -> list[Path]:
        """After `trainer.test`: write classification_report.json, per_class_recall.csv and the confusion-matrix
        and per-class-recall pictures into `out_dir`; returns the pictures (src.eval puts them in report.md)."""
        if self.test_report is None:
            log.warning("No test report (run trainer.test first, or num_classes > report_max_classes)")
            return []
        pictures = write_report(out_dir, self.test_report, self.class_names)
        for key, (_, rgb) in pictures.items():
            self._send_picture(key, rgb)
        return [path for path, _ in pictures.values()]

    def configure_optimizers(self):
        if self.hparams.get("backbone_lr_mult") is None:
            return configure(self, self.optimizer_factory, self.scheduler_factory)
        groups = backbone_and_head_groups(self, self.optimizer_factory.keywords.get("lr", 1e-3),
                                          self.hparams.backbone_lr_mult)
        return configure(self, self.optimizer_factory, self.scheduler_factory, params=groups)
