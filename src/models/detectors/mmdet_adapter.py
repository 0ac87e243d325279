"""Drive an mmdet 3.x detector through torchvision's detection contract.

`MMDetDetector` is a plain nn.Module: a Lightning module can swap it for a torchvision detector.

    model.train(); losses = model(images, targets)   # dict of scalar loss tensors
    model.eval();  dets = model(images)              # list of dict(boxes, scores, labels)

images: list of float tensors [3, H, W], RGB in 0..1 (sizes may differ).
targets: list of dict(boxes=float [N, 4] xyxy absolute pixels, labels=int64 [N] in 1..C).
Label 0 is background, as in torchvision; mmdet counts classes 0..C-1, so labels are shifted
by one on the way in and out. Boxes come back in each image's own pixel coordinates.

Needs mmdet 3.3 / mmcv 2.1 with ops / mmengine: see scripts/install_mmdet.sh. That script builds
mmcv's ops for CPU only; running on a GPU needs an mmcv built with FORCE_CUDA=1 (RoIAlign, nms).
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_CONFIG = "_base_/models/faster-rcnn_r50_fpn.py"


def mmdet_config_dir() -> Path:
    """Folder of the configs shipped inside the mmdet wheel (mmdet/.mim/configs)."""
    import mmdet

    return Path(mmdet.__file__).resolve().parent / ".mim" / "configs"


def _to_plain(obj: Any) -> Any:
    # Hydra hands over DictConfig/ListConfig; mmengine's Config wants plain containers.
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_plain(v) for v in obj)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [_to_plain(v) for v in obj]
    return obj


def load_model_config(config: str | os.PathLike | Mapping) -> dict:
    """The `model` dict of an mmdet config.

    config: a config file path, a path relative to mmdet's shipped configs
    (e.g. "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"), a full config dict with a "model" key,
    or a model dict with a "type" key.
    """
    from mmengine.config import Config

    if isinstance(config, Mapping):
        cfg = _to_plain(config)
        model = cfg.get("model", cfg)
        if not isinstance(model, dict) or "type" not in model:
            raise ValueError("config dict: expected a model dict with a 'type' key or a 'model' key")
        return copy.deepcopy(model)
    path = Path(config)
    if not path.is_file():
        shipped = mmdet_config_dir() / path
        if not shipped.is_file():
            raise FileNotFoundError(f"mmdet config {str(config)!r}: not a file, nor under {mmdet_config_dir()}")
        path = shipped
    cfg = Config.fromfile(str(path))
    if "model" not in cfg:
        raise KeyError(f"{path}: config has no 'model' key")
    return cfg.model.to_dict()


def _set_num_classes(node: Any, num_classes: int, under_rpn: bool = False) -> int:
    # Every head's num_classes (two-stage, cascade lists, single-stage), never the RPN's (always 1).
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_classes" and not under_rpn:
                node[key] = num_classes
                count += 1
            else:
                count += _set_num_classes(value, num_classes, under_rpn or key == "rpn_head")
    elif isinstance(node, list):
        count += sum(_set_num_classes(v, num_classes, under_rpn) for v in node)
    return count


def _rgb_input_preprocessor(cfg: dict) -> dict:
    # mmdet configs assume BGR images from cv2: bgr_to_rgb=True means "the model wants RGB",
    # otherwise (caffe-style) it wants BGR. Our input is RGB, so flip only for BGR models.
    cfg = dict(cfg)
    wants_rgb = bool(cfg.get("bgr_to_rgb", False))
    if cfg.get("rgb_to_bgr", False):
        raise ValueError("data_preprocessor.rgb_to_bgr=True (RGB-loaded config) is not supported")
    cfg["bgr_to_rgb"] = False
    cfg["rgb_to_bgr"] = not wants_rgb
    return cfg


def build_model_config(
    config: str | os.PathLike | Mapping = DEFAULT_CONFIG,
    num_classes: int = 1,
    cfg_options: Mapping[str, Any] | None = None,
    pretrained: bool = False,
) -> dict:
    """mmdet model dict with num_classes set, RGB 0..255 input and, unless `pretrained`, no download.

    cfg_options: keys relative to the model dict, applied last, dotted or nested (nested dicts merge
    into the config's, as in mmengine), e.g. {"train_cfg.rpn_proposal.max_per_img": 100,
    "backbone": {"depth": 18}}.
    pretrained: keep the config's backbone init_cfg (for R50: ImageNet weights from
    torchvision://resnet50, fetched at init_weights(), needs internet); False drops it.
    """
    from mmengine.config import Config

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    model = load_model_config(config)
    if _set_num_classes(model, num_classes) == 0:
        raise KeyError("model config has no num_classes key outside rpn_head: not a detector config?")
    if isinstance(model.get("backbone"), dict) and not pretrained:
        # Pretrained backbones are fetched from the internet at init_weights(); tests and CI must not.
        model["backbone"]["init_cfg"] = None
    preprocessor = model.get("data_preprocessor") or {"type": "DetDataPreprocessor"}
    model["data_preprocessor"] = _rgb_input_preprocessor(preprocessor)
    cfg = Config({"model": model})
    if cfg_options:
        cfg.merge_from_dict({f"model.{k}": _to_plain(v) for k, v in dict(cfg_options).items()})
    return cfg.model.to_dict()


def _quiet_init_weights(detector: nn.Module) -> None:
    # init_weights() logs one INFO record per parameter (hundreds of lines); keep warnings only.
    import logging

    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        detector.init_weights()
    finally:
        logger.setLevel(level)


def _check_image(i: int, img: Any) -> None:
    if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
        desc = f"{tuple(img.shape)} {img.dtype}" if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"images[{i}]: expected a float tensor [3, H, W] in 0..1, got {desc}")


def _check_target(i: int, t: Any, num_classes: int) -> tuple[Tensor, Tensor]:
    if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
        raise ValueError(f"targets[{i}]: expected a dict with 'boxes' and 'labels'")
    boxes, labels = t["boxes"], t["labels"]
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
        got = getattr(boxes, "shape", boxes)
        raise ValueError(f"targets[{i}]['boxes']: expected a float tensor [N, 4], got {got!r}")
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
        or labels.shape != boxes.shape[:1]
    ):
        n = boxes.shape[0]
        raise ValueError(f"targets[{i}]['labels']: expected an integer tensor [N] with N={n}, got {labels!r}")
    if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > num_classes):
        raise ValueError(
            f"targets[{i}]['labels']: must lie in 1..{num_classes} (0 is background), got {labels.tolist()}"
        )
    if boxes.numel() and not bool((boxes[:, 2:] > boxes[:, :2]).all()):
        raise ValueError(f"targets[{i}]['boxes']: every box needs x2 > x1 and y2 > y1 (xyxy), got {boxes.tolist()}")
    return boxes, labels


class MMDetDetector(nn.Module):
    """An mmdet detector (default: Faster R-CNN R50-FPN shipped with mmdet) behind torchvision's API.

    num_classes counts foreground classes (C); torchvision-side labels are 1..C.
    config / cfg_options / pretrained: see `build_model_config`. Weights are mmdet's own init
    (init_weights()), with no pretrained backbone unless pretrained=True; load weights with
    `load_mmdet_checkpoint`. Checkpoints are rebuilt with pretrained=False (src.utils.checkpoint).
    """

    def __init__(
        self,
        config: str | os.PathLike | Mapping = DEFAULT_CONFIG,
        num_classes: int = 1,
        cfg_options: Mapping[str, Any] | None = None,
        init_weights: bool = True,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        from mmdet.registry import MODELS  # lazily imports mmdet.models on first build
        from mmengine.config import ConfigDict
        from mmengine.registry import DefaultScope

        self.num_classes = num_classes
        self.model_cfg = build_model_config(config, num_classes, cfg_options, pretrained)
        # A scoped default ("mmdet") resolves nested types without changing global state.
        with DefaultScope.overwrite_default_scope("mmdet"):
            # ConfigDict: mmdet reads sub-configs by attribute (train_cfg.rpn).
            self.detector = MODELS.build(ConfigDict(copy.deepcopy(self.model_cfg)))
            if init_weights:
                _quiet_init_weights(self.detector)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _data_samples(self, images: list[Tensor], targets: list[Mapping] | None) -> list:
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        device = self._device()
        samples = []
        for i, img in enumerate(images):
            h, w = int(img.shape[-2]), int(img.shape[-1])
            sample = DetDataSample(
                metainfo={
                    # No resize here: the image is its own original (scale 1), padding happens later.
                    "img_shape": (h, w),
                    "ori_shape": (h, w),
                    "scale_factor": (1.0, 1.0),
                    "pad_shape": (h, w),
                }
            )
            if targets is not None:
                boxes, labels = _check_target(i, targets[i], self.num_classes)
                sample.gt_instances = InstanceData(
                    bboxes=boxes.to(device=device, dtype=torch.float32),
                    labels=labels.to(device=device, dtype=torch.int64) - 1,  # torchvision 1..C -> mmdet 0..C-1
                )
            samples.append(sample)
        return samples

    def _preprocess(self, images: list[Tensor], targets: list[Mapping] | None) -> dict:
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("images: expected a non-empty list of [3, H, W] tensors")
        for i, img in enumerate(images):
            _check_image(i, img)
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"targets: {len(targets)} dicts for {len(images)} images")
        device = self._device()
        preprocessor = self.detector.data_preprocessor
        # mmengine preprocessors cast inputs to their own recorded device, which a parent module's
        # .to()/.cuda() (e.g. Lightning's) does not update: keep it in sync with the weights.
        if preprocessor.device != device:
            preprocessor.to(device)
        data = {
            # The config's mean/std are on the 0..255 scale.
            "inputs": [img.to(device) * 255.0 for img in images],
            "data_samples": self._data_samples(list(images), targets),
        }
        return preprocessor(data, training=self.training)

    def forward(
        self, images: list[Tensor], targets: list[Mapping] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            data = self._preprocess(images, targets)
            raw = self.detector.loss(data["inputs"], data["data_samples"])
            return _sum_losses(raw)
        data = self._preprocess(images, None)
        results = self.detector.predict(data["inputs"], data["data_samples"], rescale=True)
        out = []
        for res in results:
            pred = res.pred_instances
            out.append(
                {
                    "boxes": pred.bboxes.float(),
                    "scores": pred.scores.float(),
                    "labels": pred.labels.long() + 1,  # mmdet 0..C-1 -> torchvision 1..C
                }
            )
        return out


def _sum_losses(raw: Mapping[str, Any]) -> dict[str, Tensor]:
    # Same rule as mmengine's parse_losses: only keys containing "loss" are losses ("acc" is a
    # metric); per-level lists (RPN) are summed into one scalar.
    losses = {}
    for key, value in raw.items():
        if "loss" not in key:
            continue
        if isinstance(value, Tensor):
            losses[key] = value.mean()
        else:
            losses[key] = sum(v.mean() for v in value)
    return losses


def load_mmdet_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    trusted: bool = False,
    map_location: str | torch.device = "cpu",
    prefix: str = "",
    strict: bool = True,
):
    """Load weights from a local mmdet/mmengine (or plain state_dict) checkpoint into `model`.

    mmengine checkpoints hold more than tensors: numpy values in "meta" and a MessageHub in
    "message_hub". torch.load's weights-only default (torch >= 2.6) refuses them, and mmengine's
    load_checkpoint does not pass weights_only, so it fails. We try the safe weights-only load
    first; only if that fails and the caller vouches for the file (trusted=True: a local file we
    produced) do we fully unpickle it, which can run arbitrary code. We do not allow-list globals
    with torch.serialization.add_safe_globals: a MessageHub pickles arbitrary runtime objects.

    model: an MMDetDetector (keys with or without its "detector." prefix) or a bare mmdet model.
    prefix: only keys starting with it are used, with it stripped (e.g. "net." for a Lightning
    checkpoint). Returns torch's (missing_keys, unexpected_keys).
    """
    path_str = os.fspath(path)
    if "://" in path_str:
        raise ValueError(f"{path_str}: only local checkpoint files are loaded (no downloads)")
    if not os.path.isfile(path_str):
        raise FileNotFoundError(f"{path_str}: checkpoint file not found")
    try:
        ckpt = torch.load(path_str, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trusted:
            raise RuntimeError(
                f"{path_str}: holds non-tensor objects (numpy values, mmengine MessageHub, ...) that "
                "the weights-only loader refuses; pass trusted=True only for a local file you trust"
            ) from err
        ckpt = torch.load(path_str, map_location=map_location, weights_only=False)

    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        found = list(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"{path_str}: no state_dict of tensors found (got {found})")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise KeyError(f"{path_str}: no state_dict key starts with prefix {prefix!r}")

    target = model
    if isinstance(model, MMDetDetector) and not any(k.startswith("detector.") for k in state):
        target = model.detector  # a raw mmdet checkpoint: keys are relative to the detector
    return target.load_state_dict(state, strict=strict)
