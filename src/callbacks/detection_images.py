"""A picture of detections vs ground truth on a few validation images, each validation epoch: saved as PNG in
the run dir and sent to loggers that take images (W&B `log_image`, TensorBoard `add_image`).

Reads what `DetectionSystem.validation_step` returns ({"preds", "targets"} in original image pixels), so the
model does no extra work for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes

from src.data import keys
from src.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

GT_COLOUR, PRED_COLOUR = (0, 220, 0), (255, 40, 40)


def _names(labels: torch.Tensor, categories: Sequence[dict] | None, scores: torch.Tensor | None = None) -> list[str]:
    out = []
    for i, lab in enumerate(labels.tolist()):
        name = categories[lab - 1]["name"] if categories and 0 < lab <= len(categories) else str(lab)
        out.append(f"{name} {float(scores[i]):.2f}" if scores is not None else name)
    return out


def draw_example(image: torch.Tensor, orig_size: Sequence[int], pred: dict, target: dict,
                 categories: Sequence[dict] | None = None, score_threshold: float = 0.5,
                 height: int = 240) -> np.ndarray:
    """One panel (uint8 HxWx3): the image at its original size, ground truth green, predictions >= threshold red
    with class and score, then scaled to `height`."""
    img = image.detach().float().cpu()
    if tuple(img.shape[-2:]) != tuple(orig_size):
        img = F.interpolate(img[None], size=tuple(int(s) for s in orig_size), mode="bilinear", align_corners=False)[0]
    canvas = (img.clamp(0, 1) * 255).to(torch.uint8)
    if len(target["boxes"]):
        canvas = draw_bounding_boxes(canvas, target["boxes"].float().cpu(), colors=GT_COLOUR, width=2)
    keep = pred["scores"].cpu() >= score_threshold
    if bool(keep.any()):
        canvas = draw_bounding_boxes(canvas, pred["boxes"].float().cpu()[keep], colors=PRED_COLOUR, width=1,
                                     labels=_names(pred["labels"].cpu()[keep], categories, pred["scores"].cpu()[keep]))
    panel = canvas.permute(1, 2, 0).numpy()
    h, w = panel.shape[:2]
    return cv2.resize(panel, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


def draw_examples(examples: Sequence[dict], categories: Sequence[dict] | None = None,
                  score_threshold: float = 0.5, height: int = 240) -> np.ndarray:
    """Panels side by side with a white gap. examples: {image, orig_size, pred, target}."""
    panels = [draw_example(e["image"], e["orig_size"], e["pred"], e["target"], categories, score_threshold, height)
              for e in examples]
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(row, axis=1)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)


class DetectionImageLogger(L.Callback):
    def __init__(self, num_images: int = 4, score_threshold: float = 0.5, every_n_epochs: int = 1,
                 dirname: str = "detections", key: str = "val/detections") -> None:
        self.num_images = num_images
        self.score_threshold = score_threshold
        self.every_n_epochs = every_n_epochs
        self.dirname = dirname
        self.key = key
        self.examples: list[dict] = []
        self.saved: list[Path] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.examples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer) or not outputs or batch is None or len(self.examples) >= self.num_images:
            return
        for img, t, p, g in zip(batch[keys.IMAGE], batch[keys.TARGET], outputs["preds"], outputs["targets"]):
            if len(self.examples) < self.num_images:
                self.examples.append({"image": img.detach().cpu(), "orig_size": t["orig_size"].tolist(),
                                      "pred": {k: v.detach().cpu() for k, v in p.items()},
                                      "target": {k: v.detach().cpu() for k, v in g.items()}})

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.examples or not self._active(trainer) or not trainer.is_global_zero:
            return
        picture = draw_examples(self.examples, getattr(pl_module, "categories", None), self.score_threshold)
        path = save_png(picture, Path(trainer.default_root_dir) / self.dirname
                        / f"val_epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}.png")
        self.saved.append(path)
        for lg in trainer.loggers:
            name = type(lg).__name__
            if name == "WandbLogger":
                lg.log_image(key=self.key, images=[picture], step=trainer.global_step,
                             caption=["ground truth green, predictions red"])
            elif name == "TensorBoardLogger":
                lg.experiment.add_image(self.key, picture, trainer.global_step, dataformats="HWC")
        self.examples = []
