"""Shared by the detection tests (torchvision and mmdet backends): a quiet CPU Trainer, COCO ground truth turned
into DetectionSystem batches, and the oracle: pycocotools' COCOeval run directly on COCO dicts."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.data import keys

# DetectionSystem's logged keys -> index in COCOeval.stats (summarize()'s order).
COCO_STATS_INDEX = {"map": 0, "map_50": 1, "map_75": 2, "map_small": 3, "map_medium": 4, "map_large": 5,
                    "mar_100": 8}


def cpu_trainer(**kw) -> L.Trainer:
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**base, **kw})


def xyxy(b):
    """COCO [x, y, w, h] -> [x1, y1, x2, y2]."""
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def resize_scale(im: dict, scale: float) -> tuple[int, int, torch.Tensor]:
    """(h, w, [sx, sy, sx, sy]) of COCO image `im` resized to `scale` of its size (the eval resize)."""
    h, w = round(im["height"] * scale), round(im["width"] * scale)
    sx, sy = w / im["width"], h / im["height"]
    return h, w, torch.tensor([sx, sy, sx, sy])


def gt_batches(gt: dict, scale: float, images: list[torch.Tensor] | None = None) -> list[dict]:
    """One image per batch, ground truth in the resized pixels (as the data pipeline gives it), orig_size the
    original. images: the resized images, one per gt["images"]; default black images whose first pixel holds
    their index (for a lookup stub detector)."""
    batches = []
    for k, im in enumerate(gt["images"]):
        h, w, s = resize_scale(im, scale)
        if images is None:
            img = torch.zeros(3, h, w)
            img[0, 0, 0] = k / 255
        else:
            img = images[k]
            assert tuple(img.shape[-2:]) == (h, w), (img.shape, h, w)
        g = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        target = {"boxes": torch.tensor([xyxy(a["bbox"]) for a in g]).reshape(-1, 4) * s,
                  "labels": torch.tensor([a["category_id"] for a in g], dtype=torch.int64),
                  "iscrowd": torch.zeros(len(g), dtype=torch.int64), "image_id": torch.tensor(im["id"]),
                  "orig_size": torch.tensor([im["height"], im["width"]])}
        batches.append({keys.IMAGE: [img], keys.TARGET: [target]})
    return batches


def cocoeval_stats(gt: dict, dets: list[dict]) -> np.ndarray:
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def expected_metrics(stats: np.ndarray, stage: str = "val") -> dict[str, float]:
    """COCOeval's numbers under DetectionSystem's metric names."""
    return {f"{stage}/{k}": float(stats[i]) for k, i in COCO_STATS_INDEX.items()}


# ---- mmdet backend (plain dicts: importing them needs no mmdet) ------------------------------------------------

# Fewer anchors sampled, proposals and RoIs, and a narrower box head: same graph, CPU-sized.
MMDET_FEW_PROPOSALS = {
    "train_cfg.rpn.sampler.num": 64,
    "train_cfg.rpn_proposal.nms_pre": 200,
    "train_cfg.rpn_proposal.max_per_img": 50,
    "train_cfg.rcnn.sampler.num": 64,
    "test_cfg.rpn.nms_pre": 200,
    "test_cfg.rpn.max_per_img": 50,
    "roi_head.bbox_head.fc_out_channels": 128,
}
# ResNet-18 and 64-channel FPN/heads: ~3x cheaper than R50-FPN, same detector code paths.
MMDET_SMALL_NET = {
    "backbone.depth": 18,
    "neck.in_channels": [64, 128, 256, 512],
    "neck.out_channels": 64,
    "rpn_head.in_channels": 64,
    "rpn_head.feat_channels": 64,
    "roi_head.bbox_roi_extractor.out_channels": 64,
    "roi_head.bbox_head.in_channels": 64,
}
