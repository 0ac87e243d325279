"""Object detection system: any nn.Module with torchvision's detection contract, trained and evaluated with
COCO mAP.

The injected `net` (torchvision Faster R-CNN from src.models.detectors.torchvision_models, or the mmdet
adapter) must follow
    train mode: net(images: list[CHW float 0..1], targets: list[{boxes xyxy float, labels int64 1..C}])
                -> dict of scalar losses
    eval mode:  net(images) -> list of {boxes xyxy, scores, labels}, boxes in each input image's pixels.

Evaluation maps predictions and ground truth back to each image's size on disk (target["orig_size"]) before
COCO mAP, so the small/medium/large area ranges mean what they mean in COCO whatever the eval resize.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from src.data import keys
from src.data.detection import AGNOSTIC_CATEGORY, scale_boxes
from src.models.detection_pictures import add_examples, draw_examples
from src.models.detectors.torchvision_models import foreground_classes
from src.models.configure_optimizers import configure
from src.utils.media import save_png

log = logging.getLogger(__name__)

# pycocotools' own thresholds (float64). torchmetrics' defaults come from float32 torch.linspace (0.6 becomes
# 0.60000002), which moves COCOeval's recall lookup at exact recall steps: measured 0.4318 vs 0.4353 map_large on
# a hand-made set. With these, the numbers equal COCOeval's (tests/models/test_detection.py).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True).tolist()
COCO_REC_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True).tolist()
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
CATEGORIES_KEY = "detection_categories"
LEGACY_PREFIX = "model."  # the detector's state-dict prefix before it was renamed `net`


def rename_legacy_keys(checkpoint: dict) -> dict:
    """Checkpoints written before the detector was named `net` hold `model.*` weights: rename them in place
    (Lightning and src.utils.checkpoint.load_system call on_load_checkpoint before load_state_dict)."""
    state = checkpoint.get("state_dict")
    if state and any(k.startswith(LEGACY_PREFIX) for k in state):
        checkpoint["state_dict"] = {("net." + k[len(LEGACY_PREFIX):] if k.startswith(LEGACY_PREFIX) else k): v
                                    for k, v in state.items()}
    return checkpoint


def coco_map(backend: str = "pycocotools") -> MeanAveragePrecision:
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend,
                                iou_thresholds=COCO_IOU_THRESHOLDS, rec_thresholds=COCO_REC_THRESHOLDS)


class DetectionSystem(L.LightningModule):
    """class_agnostic: every ground-truth label becomes 1 (one "product" class: the main-body detector), so a
    model with one foreground class trains on any COCO file. Keep it equal to the data's flag.
    keep_examples: how many test images (with predictions) `report_artifacts` draws."""

    inference_kind = "detector"  # what src.inference serves it as (stored with every checkpoint)

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_agnostic: bool = False,
        keep_examples: int = 4,
        metric_backend: str = "pycocotools",
    ) -> None:
        super().__init__()
        # Partials and modules are not weights-only-checkpoint-safe hyperparameters; the Hydra config keeps them.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_agnostic = class_agnostic
        self.keep_examples = keep_examples
        # pycocotools: the COCO reference implementation itself (tests check equality with COCOeval).
        self.val_map = coco_map(metric_backend)
        self.test_map = coco_map(metric_backend)
        self.categories: list[dict] | None = None  # [{id, name}] in label order, saved in checkpoints
        self.test_examples: list[dict] = []

    # ---- data contract -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        cats = getattr(dm, "categories", None) if dm is not None else None
        if cats is not None:
            self.categories = [AGNOSTIC_CATEGORY] if self.class_agnostic else [dict(c) for c in cats]
        want = len(self.categories) if self.categories is not None else None
        have = foreground_classes(self.net)
        if want is not None and have is not None and want != have:
            raise ValueError(
                f"the detector predicts {have} foreground classes but the data has {want} "
                f"(class_agnostic={self.class_agnostic}); set model.net.num_classes to {want + 1} for torchvision "
                f"detectors (background included) or {want} for the mmdet adapter")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # src.detect writes COCO category ids from this (a checkpoint is usable without the annotation file).
        if self.categories is not None:
            checkpoint[CATEGORIES_KEY] = self.categories

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.categories = checkpoint.get(CATEGORIES_KEY, self.categories)
        rename_legacy_keys(checkpoint)

    def _model_targets(self, targets: list[dict]) -> list[dict]:
        # Only boxes and labels go to the model (any detector accepts them); crowd boxes are not trained on.
        out = []
        for t in targets:
            keep = t["iscrowd"] == 0 if "iscrowd" in t else torch.ones_like(t["labels"], dtype=torch.bool)
            labels = t["labels"][keep]
            out.append({"boxes": t["boxes"][keep],
                        "labels": torch.ones_like(labels) if self.class_agnostic else labels})
        return out

    # ---- steps ---------------------------------------------------------------------------------------
    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return self.net(images)

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:  # every image in the batch was unreadable
            return None
        images = batch[keys.IMAGE]
        losses = self.net(images, self._model_targets(batch[keys.TARGET]))
        loss = sum(losses.values())
        if not math.isfinite(float(loss.detach())):
            # As torchvision's references/detection/engine.py: stop rather than train on NaN weights.
            terms = {k: float(v.detach()) for k, v in losses.items()}
            raise FloatingPointError(
                f"non-finite detection loss {float(loss.detach())} at step {self.global_step} (terms: {terms}); "
                "lower the learning rate, add warmup or gradient clipping, or check the boxes")
        bs = len(images)
        self.log_dict({f"train/loss_{k.removeprefix('loss_')}": v.detach() for k, v in losses.items()}, batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        return loss

    @torch.no_grad()
    def predict_original(self, images: list[torch.Tensor], targets: list[dict]) -> tuple[list[dict], list[dict]]:
        """Predictions and ground truth in each image's original pixels (for COCO metrics)."""
        preds = self.net(images)
        preds_o, gts_o = [], []
        for img, p, t in zip(images, preds, targets):
            cur, orig = img.shape[-2:], t["orig_size"].tolist()
            preds_o.append({"boxes": scale_boxes(p["boxes"].float(), cur, orig), "scores": p["scores"],
                            "labels": p["labels"]})
            gt = {"boxes": scale_boxes(t["boxes"].float(), cur, orig),
                  "labels": torch.ones_like(t["labels"]) if self.class_agnostic else t["labels"]}
            if "iscrowd" in t:
                gt["iscrowd"] = t["iscrowd"]
            gts_o.append(gt)
        return preds_o, gts_o

    def _eval_step(self, batch: dict | None, metric: MeanAveragePrecision) -> dict | None:
        if batch is None:
            return None
        preds, gts = self.predict_original(batch[keys.IMAGE], batch[keys.TARGET])
        metric.update(preds, gts)
        return {"preds": preds, "targets": gts}

    def validation_step(self, batch, batch_idx: int):
        return self._eval_step(batch, self.val_map)

    def test_step(self, batch, batch_idx: int):
        out = self._eval_step(batch, self.test_map)
        if out is not None:
            add_examples(self.test_examples, self.keep_examples, batch[keys.IMAGE], batch[keys.TARGET], out["preds"],
                         out["targets"])
        return out

    def on_test_epoch_start(self) -> None:
        self.test_examples = []

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        res = metric.compute()
        # -1 is COCO's "no ground truth in this area range"; logged as it is, as pycocotools prints it.
        # Already reduced across ranks by torchmetrics: no sync_dist.
        self.log(f"{stage}/map", res["map"].float(), prog_bar=True)
        self.log_dict({f"{stage}/{k}": res[k].float() for k in MAP_KEYS if k != "map"})
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def configure_optimizers(self):
        return configure(self, self.optimizer_factory, self.scheduler_factory)

    # ---- reports -------------------------------------------------------------------------------------
    def report_artifacts(self, out_dir: str | Path) -> list[Path]:
        """A picture of test predictions (red) vs ground truth (green) for src/eval.py's report."""
        if not self.test_examples:
            return []
        path = Path(out_dir) / "test_detections.png"
        save_png(draw_examples(self.test_examples, self.categories), path)
        return [path]
