"""What serving needs to know about a trained model, declared once: the `inference:` config node.

Training stores it in every checkpoint (``checkpoint["inference"]``, src/utils/checkpoint.py) and export writes
it next to the ONNX file (``model.onnx`` -> ``model.inference.json``), so a served model is always run with the
preprocessing and thresholds it was trained and validated with, and serving needs neither Hydra nor the
training code to know them. The eval transform is kept in albumentations' own serialised form
(``albumentations.to_dict``), which ``albumentations.from_dict`` rebuilds without importing anything but
albumentations' registered transforms.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from src.utils.io import atomic_write_json

__all__ = ["CHECKPOINT_KEY", "KINDS", "InferenceSettings", "read_sidecar", "sidecar_path", "write_sidecar"]

CHECKPOINT_KEY = "inference"
KINDS = ("embedder", "detector", "classifier")
DETECTION_KEYS = ("score_threshold_image", "score_threshold_video", "image_short_side", "video_short_side")


@dataclass(frozen=True)
class InferenceSettings:
    """Args:
        kind: "embedder", "detector" or "classifier".
        eval_transform: the eval transform as ``albumentations.to_dict`` wrote it (embedders, classifiers).
        gallery_views: embedders: gallery images are enrolled as the mean embedding over the image and these
            views (src/inference/gallery_views.py).
        eval_size, max_size: detectors: the shorter side images are resized to, and the cap on the longer side.
        detection: detectors: defaults for src.detect and live-stream matching (``score_threshold_image``,
            ``score_threshold_video``, ``image_short_side``, ``video_short_side``; None = the tool's default).
        fingerprint: set by ONNX export: the eager network's fingerprint, so galleries built with the
            checkpoint are searched with the ONNX file and vice versa.
        categories: detectors: COCO categories, label i + 1 = categories[i].
    """

    kind: str
    eval_transform: dict | None = None
    gallery_views: tuple[str, ...] = ()
    eval_size: int | None = None
    max_size: int | None = None
    detection: dict = field(default_factory=dict)
    fingerprint: str | None = None
    categories: list | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"inference.kind must be one of {KINDS}, got {self.kind!r}")
        unknown = set(self.detection) - set(DETECTION_KEYS)
        if unknown:
            raise ValueError(f"inference.detection: unknown key(s) {sorted(unknown)}; known: {DETECTION_KEYS}")
        object.__setattr__(self, "gallery_views", tuple(self.gallery_views or ()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> "InferenceSettings":
        """Unknown keys fail, naming ``source`` (a checkpoint or sidecar path): a typo never goes unnoticed."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown inference key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gallery_views"] = list(self.gallery_views)
        return out

    def with_fingerprint(self, fingerprint: str) -> "InferenceSettings":
        return InferenceSettings(**{**asdict(self), "fingerprint": fingerprint})

    def transform_identity(self) -> str:
        """Canonical JSON of the eval transform without albumentations' version: part of the fingerprint."""
        spec = {k: v for k, v in (self.eval_transform or {}).items() if k != "__version__"}
        return json.dumps(spec, sort_keys=True, default=list)

    def preprocess(self) -> Callable[[np.ndarray], torch.Tensor]:
        """One RGB uint8 crop -> CHW float tensor, as at evaluation during training."""
        if not self.eval_transform:
            raise ValueError(f"these {self.kind} settings hold no eval_transform")
        import albumentations as A

        with warnings.catch_warnings():
            # albumentations 2.0 serialises PadIfNeeded's derived `padding` and then warns when reading it back.
            warnings.filterwarnings("ignore", message=r"Argument\(s\) 'padding' are not valid", category=UserWarning)
            transform = A.from_dict(self.eval_transform)

        def run(image: np.ndarray) -> torch.Tensor:
            out = transform(image=image)["image"]
            return out if isinstance(out, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(out))

        return run


def sidecar_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".inference.json")


def write_sidecar(model_path: str | os.PathLike, settings: InferenceSettings) -> Path:
    path = sidecar_path(model_path)
    atomic_write_json(path, settings.to_dict())
    return path


def read_sidecar(model_path: str | os.PathLike) -> InferenceSettings:
    path = sidecar_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{model_path}: its inference settings {path} are missing (export writes both; "
                                "scripts/export_onnx.py)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return InferenceSettings.from_dict(data, str(path))
