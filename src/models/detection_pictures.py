"""Pictures of detections vs ground truth: ground truth green, predictions red with class and score, each image
at its original size. Used by DetectionSystem's test report and the DetectionImageLogger callback."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes

GT_COLOUR, PRED_COLOUR = (0, 220, 0), (255, 40, 40)


def add_examples(examples: list[dict], limit: int, images: Sequence[torch.Tensor], targets: Sequence[dict],
                 preds: Sequence[dict], ground_truth: Sequence[dict]) -> None:
    """Append what `draw_examples` takes, on the CPU, until `examples` holds `limit`: the network inputs, their
    targets (for orig_size), and predictions / ground truth in original pixels as
    DetectionSystem.predict_original gives them."""
    for img, t, p, g in zip(images, targets, preds, ground_truth):
        if len(examples) >= limit:
            return
        examples.append({"image": img.detach().cpu(), "orig_size": t["orig_size"].tolist(),
                         "pred": {k: v.detach().cpu() for k, v in p.items()},
                         "target": {k: v.detach().cpu() for k, v in g.items()}})


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
    """Panels side by side with a white gap. examples: {image, orig_size, pred, target} (see `add_examples`)."""
    panels = [draw_example(e["image"], e["orig_size"], e["pred"], e["target"], categories, score_threshold, height)
              for e in examples]
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(row, axis=1)
