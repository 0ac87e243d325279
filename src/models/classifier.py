"""Image classification system: a timm network, a criterion, metrics and optimisation from config, plus the
training tricks of product/style recognition: CutMix/Mixup, soft targets, distillation from a frozen teacher,
TTA at test time, out-of-fold prediction files and a report (confusion matrix, per-class recall)."""

from __future__ import annotations

import io
import json
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
from src.losses.distillation import kd_kl_div
from src.models.classification_report import confusion_figure, recall_figure, summarize
from src.models.configure_optimizers import backbone_and_head_groups, configure
from src.nn.tta import TTA
from src.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

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
        tta_scales = [float(s) for s in tta_scales] if tta_scales is not None else None
        # Partials are not checkpoint-safe hyperparameters (weights-only loading); the Hydra config keeps them.
        self.save_hyperparameters(ignore=["net", "criterion", "optimizer", "scheduler", "batch_mix", "teacher"])
        if not 0.0 <= kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha must be in [0, 1], got {kd_alpha}")
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
        object.__setattr__(self, "teacher_factory", teacher)  # not a submodule when given as a module either
        self.kd_alpha, self.kd_temperature = float(kd_alpha), float(kd_temperature)
        self.class_names = list(class_names) if class_names is not None else None
        self.save_test_predictions = save_test_predictions
        # Kept out of the module tree: the TTA wrapper shares self.net's parameters (no duplicate state-dict keys).
        tta = TTA(net, hflip=tta_hflip, scales=tta_scales or (1.0,)) if (tta_hflip or tta_scales) else None
        object.__setattr__(self, "_eval_net", tta)
        object.__setattr__(self, "teacher", teacher if isinstance(teacher, nn.Module) else None)
        metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro"), "f1": MulticlassF1Score(num_classes, average="macro")}
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # The confusion matrix is num_classes^2: kept for small label sets only (not AliProducts' 50k).
        self.test_confusion = MulticlassConfusionMatrix(num_classes) if num_classes <= report_max_classes else None
        self.test_report: dict | None = None
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    # --- training -------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.teacher is None and self.teacher_factory is not None:
            object.__setattr__(self, "teacher", self.teacher_factory())
            log.info("Distilling from teacher %s (alpha=%.2f, T=%.1f)", type(self.teacher.net if hasattr(
                self.teacher, "net") else self.teacher).__name__, self.kd_alpha, self.kd_temperature)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
            self.teacher.eval()

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        images, target = batch[keys.IMAGE], batch.get(keys.SOFT_LABEL, batch[keys.LABEL])
        if self.batch_mix is not None:
            images, target = self.batch_mix(images, target)
        logits = self(images)
        losses = {"loss_ce": self.criterion(logits, target)}
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            losses["loss_kd"] = kd_kl_div(logits, teacher_logits, self.kd_temperature)
            losses["loss"] = self.kd_alpha * losses["loss_kd"] + (1 - self.kd_alpha) * losses["loss_ce"]
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
        return self._eval_net(images) if self._eval_net is not None else self(images)

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
        self._test_outputs = []
        self.test_report = None

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_metrics, "test")
        if logits is None:
            return
        if self.test_confusion is not None:
            self.test_confusion.update(logits, batch[keys.LABEL])
        if self.save_test_predictions:
            self._test_outputs.append((F.softmax(logits.float(), -1).cpu(), batch[keys.INDEX].cpu(),
                                       batch[keys.LABEL].cpu()))

    def on_test_epoch_end(self) -> None:
        if self.test_confusion is not None:
            cm = self.test_confusion.compute().cpu().numpy()
            self.test_confusion.reset()
            self.test_report = {"confusion": cm.tolist(), **summarize(cm, self.class_names)}
            self._log_figures({"test/confusion_matrix": confusion_figure(cm, self.class_names)})
        if self.save_test_predictions and self._test_outputs:
            self._write_predictions()

    def _test_uids(self, index: np.ndarray) -> list[str]:
        datasets = getattr(getattr(self.trainer, "datamodule", None), "datasets", None) or {}
        samples = getattr(datasets.get("test"), "samples", None)
        return [samples[i].uid for i in index] if samples is not None else [str(i) for i in index]

    def _write_predictions(self) -> None:
        probs = torch.cat([o[0] for o in self._test_outputs]).numpy()
        index = torch.cat([o[1] for o in self._test_outputs]).numpy()
        labels = torch.cat([o[2] for o in self._test_outputs]).numpy()
        uids = self._test_uids(index)
        out = Path(self.trainer.default_root_dir) / "predictions"
        suffix = f"_rank{self.global_rank}" if self.trainer.world_size > 1 else ""
        buf = io.BytesIO()
        np.savez(buf, uids=np.asarray(uids), probs=probs.astype(np.float32), labels=labels, index=index)
        atomic_write_bytes(out / f"test_probs{suffix}.npz", buf.getvalue())
        header = "uid,label,pred," + ",".join(f"p{c}" for c in range(probs.shape[1]))
        rows = [f"{u},{int(y)},{int(p.argmax())}," + ",".join(f"{v:.6f}" for v in p)
                for u, y, p in zip(uids, labels, probs)]
        atomic_write_text(out / f"test_probs{suffix}.csv", "\n".join([header, *rows]) + "\n")
        log.info("Wrote %d test predictions to %s", len(uids), out)
        self._test_outputs = []

    # --- reports --------------------------------------------------------------------------------------
    def _log_figures(self, figures: dict, paths: dict | None = None) -> None:
        """Send pictures to the loggers that take images (TensorBoard, W&B); CSV loggers are skipped."""
        if getattr(self, "_trainer", None) is None:
            return
        for lg in self.loggers:
            kind = type(lg).__name__
            for name, fig in figures.items():
                if kind == "TensorBoardLogger":
                    lg.experiment.add_figure(name, fig, global_step=self.global_step)
                elif kind == "WandbLogger" and paths and name in paths:
                    lg.log_image(key=name, images=[str(paths[name])])

    def report_artifacts(self, out_dir: str | Path) -> list[Path]:
        """After `trainer.test`: write classification_report.json, per_class_recall.csv and the confusion-matrix
        and per-class-recall pictures into `out_dir`; returns the pictures (src.eval puts them in report.md)."""
        if self.test_report is None:
            log.warning("No test report (run trainer.test first, or num_classes > report_max_classes)")
            return []
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        report = self.test_report
        atomic_write_json(out_dir / "classification_report.json", report)
        lines = ["class,recall,precision,f1,support"] + [
            f"{json.dumps(p['class'])},{p['recall']:.4f},{p['precision']:.4f},{p['f1']:.4f},{p['support']}"
            for p in report["per_class"]]
        atomic_write_text(out_dir / "per_class_recall.csv", "\n".join(lines) + "\n")
        cm = np.asarray(report["confusion"])
        figures = {"test/confusion_matrix": confusion_figure(cm, self.class_names),
                   "test/per_class_recall": recall_figure(report)}
        paths = {}
        for name, fig in figures.items():
            path = out_dir / f"{name.split('/')[-1]}.png"
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            atomic_write_bytes(path, buf.getvalue())
            paths[name] = path
        self._log_figures(figures, paths)
        return list(paths.values())

    def configure_optimizers(self):
        if self.hparams.get("backbone_lr_mult") is None:
            return configure(self, self.optimizer_factory, self.scheduler_factory)
        groups = backbone_and_head_groups(self, self.optimizer_factory.keywords.get("lr", 1e-3),
                                          self.hparams.backbone_lr_mult)
        return configure(self, self.optimizer_factory, self.scheduler_factory, params=groups)
