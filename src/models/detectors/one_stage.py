"""One-stage anchor-free detector for CPU latency: torchvision FCOS over a timm / EfficientNet-Lite FPN.

Why: a two-stage detector pays per proposal (the box head runs on every RoI; experiments/detection_latency).
FCOS predicts a class score, a centre-ness and a box at every location of a few FPN levels with a small shared
conv tower, so its cost is a fixed, dense pass, like PicoDet's.

Default shape (PicoDet-like, small): EfficientNet-Lite0 body, FPN at strides 8, 16, 32 (`out_indices` 2, 3, 4)
plus the max-pooled stride-64 level of `TimmFPNBackbone`, `fpn_channels=64`, `num_convs=2` 3x3 conv + GroupNorm
+ ReLU layers in each of the two towers (classification; box + centre-ness), shared by all levels.

Contract: torchvision's (train: `model(images, targets)` -> {classification, bbox_regression, bbox_ctrness}
losses; eval: [{boxes, scores, labels}] in each input image's pixels), so `DetectionSystem`, ONNX export
(`src.inference.onnx.export_detector_onnx`) and `src.inference` use it like the Faster R-CNN builders. Like them
it does not resize: the data pipeline does (`NoResizeTransform`; pass `min_size` for torchvision's resize).

Classes: `num_classes` counts the FOREGROUND classes only (C; 1 for a main-body detector), unlike the Faster R-CNN
builders (C + 1). torchvision's FCOS uses sigmoid focal loss with no background class, but indexes its classifier
columns with the target label directly, so labels 1..C need C + 1 columns there, column 0 a never-positive dummy
(torchvision's own fcos_resnet50_fpn has 91 columns for COCO's 80 classes + unused ids). `FCOSDetector` instead
has exactly C columns: labels 1..C train columns 0..C-1 and come back as 1..C.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

from src.models.detectors.torchvision_models import TimmFPNBackbone, _set_resize


class FCOSDetector(FCOS):
    """torchvision FCOS with one classifier column per foreground class: labels 1..C train columns 0..C-1 and
    come back as 1..C. Training and inference are otherwise torchvision's (centre sampling; focal, GIoU and
    centre-ness losses; per-level top-k, then class-wise NMS)."""

    @property
    def num_classes(self) -> int:
        """Foreground classes (C): what DetectionSystem checks against the data (`foreground_classes`)."""
        return self.head.classification_head.num_classes

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     num_anchors_per_level: list[int]) -> dict[str, Tensor]:
        for t in targets:
            labels = t["labels"]
            if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > self.num_classes):
                # A label 0 would silently become background (-1) and one above C an index error.
                raise ValueError(f"FCOS labels must be in 1..{self.num_classes}, got {labels.unique().tolist()}")
        shifted = [{**t, "labels": t["labels"] - 1} for t in targets]
        return super().compute_loss(shifted, head_outputs, anchors, num_anchors_per_level)

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        # Faster R-CNN's key order (boxes, labels, scores): an ONNX export flattens the dict in this order and
        # src.inference.onnx.OrtDetectorModel reads its outputs so (torchvision's FCOS puts scores second).
        return [{"boxes": d["boxes"], "labels": d["labels"] + 1, "scores": d["scores"]} for d in detections]


def separable_tower(channels: int, num_convs: int) -> nn.Sequential:
    """`num_convs` x (3x3 depthwise conv, 1x1 conv, GroupNorm(16), ReLU): FCOSHead's tower at ~1/8 of the
    multiply-adds of its 3x3 full convs (PicoDet's heads are depthwise-separable for the same reason)."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                   nn.Conv2d(channels, channels, 1), nn.GroupNorm(16, channels), nn.ReLU()]
    return nn.Sequential(*layers)


def fcos(
    backbone_name: str = "efficientnet_lite0",
    num_classes: int = 1,
    out_indices: Sequence[int] = (2, 3, 4),
    fpn_channels: int = 64,
    num_convs: int = 2,
    separable: bool = False,
    pretrained: bool = False,
    frozen_bn: bool = False,
    anchor_sizes: Sequence[int] | None = None,
    center_sampling_radius: float = 1.5,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    timm_kwargs: dict | None = None,
) -> FCOSDetector:
    """FCOS over `TimmFPNBackbone` (any timm `features_only` body, or `efficientnet_lite0/1/2` whose `pretrained`
    ImageNet weights install offline).

    num_classes: foreground classes C (no background, see the module doc).
    fpn_channels: FPN and head width; a multiple of 16 (the head's GroupNorm has 16 groups).
    num_convs: 3x3 conv layers in each head tower (torchvision's default 4; 2 here for CPU).
    separable: depthwise-separable tower convs (`separable_tower`) instead of full 3x3 convs.
    anchor_sizes: one per level (the `out_indices` levels + the max-pooled one); FCOS has no anchor boxes, these
      set each level's object sizes: a location trains on a box whose largest side distance lies in
      [4 * size, 8 * size) (first level from 0, last level unbounded) and centre sampling uses 1.5 * size.
      Default: the level strides (8, 16, 32, 64), as in the FCOS paper.
    score_thresh: per location, sqrt(sigmoid(class) * sigmoid(centre-ness)) before NMS; 0.05 keeps the low
      scores COCO mAP needs (as the Faster R-CNN builders' box_score_thresh); services threshold again.
    nms_thresh / detections_per_img: class-wise NMS IoU and the boxes kept per image.
    topk_candidates: highest-scoring (location, class) pairs kept per level before NMS.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes counts foreground classes for FCOS (>= 1, no background), got {num_classes}")
    if fpn_channels % 16:
        raise ValueError(f"fpn_channels must be a multiple of 16 (GroupNorm(16) in the FCOS head), got {fpn_channels}")
    backbone = TimmFPNBackbone(backbone_name, out_indices, fpn_channels, pretrained, frozen_bn, **(timm_kwargs or {}))
    strides = backbone.strides + [backbone.strides[-1] * 2]  # + LastLevelMaxPool
    sizes = list(anchor_sizes) if anchor_sizes is not None else strides
    if len(sizes) != len(strides):
        raise ValueError(f"anchor_sizes needs one size per pyramid level ({len(strides)}: out_indices "
                         f"{list(out_indices)} + pool), got {len(sizes)}")
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in sizes), aspect_ratios=((1.0,),) * len(sizes))
    head = FCOSHead(fpn_channels, num_anchors=1, num_classes=num_classes, num_convs=num_convs)
    if separable:
        head.classification_head.conv = separable_tower(fpn_channels, num_convs)
        head.regression_head.conv = separable_tower(fpn_channels, num_convs)
    model = FCOSDetector(backbone, num_classes, image_mean=list(backbone.mean), image_std=list(backbone.std),
                         anchor_generator=anchors, head=head, center_sampling_radius=center_sampling_radius,
                         score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                         topk_candidates=topk_candidates)
    _set_resize(model, min_size, max_size)
    return model


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    """Millions of parameters per part (backbone body, FPN, head): for reports."""
    parts = {"body": model.backbone.body, "fpn": model.backbone.fpn, "head": model.head}
    return {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in parts.items()}


__all__ = ["FCOSDetector", "count_parameters", "fcos", "separable_tower"]

