"""Boxes for an RGB image: a trained detector (checkpoint or ONNX file), or the whole image (PP-ShiTu's fallback).

`Detector` drives any model with torchvision's eval contract (``model(list of CHW float 0..1)`` ->
``[{boxes xyxy, scores, labels}]``): the network of a DetectionSystem checkpoint, or its ONNX export run by
ONNX Runtime (src.inference.onnx.OrtDetectorModel). The project's detectors do not resize
(src.models.detectors.torchvision_models.NoResizeTransform): the data pipeline does, with the shorter side at
``eval_size`` (longer side capped at ``max_size``). `load_detector` reads both from the model's inference
settings, resizes the same way (src.data.images.resize_shorter_side), and maps boxes back to the input
image's pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from src.data.images import check_rgb_image, resize_shorter_side

__all__ = ["Detections", "Detector", "DetectorLike", "WholeImageDetector", "detector_input", "load_detector"]


@dataclass
class Detections:
    """``boxes`` float32 ``[n, 4]`` xyxy in the input image's pixels; ``scores`` float32 ``[n]``, best first;
    ``labels`` int64 ``[n]`` (the detector's classes; 1 = "product" for class-agnostic detectors)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


class DetectorLike(Protocol):
    def detect(self, image: np.ndarray) -> Detections: ...


class WholeImageDetector:
    """One box covering the whole image, score 1: recognition of single-product photos without a detector."""

    def detect(self, image: np.ndarray) -> Detections:
        h, w = check_rgb_image(image).shape[:2]
        return Detections(np.array([[0, 0, w, h]], np.float32), np.ones(1, np.float32), np.ones(1, np.int64))

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return [self.detect(im) for im in images]


def detector_input(image: np.ndarray, eval_size: int | None, max_size: int | None
                   ) -> tuple[torch.Tensor, tuple[float, float]]:
    """An RGB uint8 photo as a detector sees it: shorter side resized to ``eval_size`` (longer side capped at
    ``max_size``), CHW float in [0, 1]; and the (x, y) scale back to the photo's pixels."""
    image, scale = resize_shorter_side(image, eval_size, max_size)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255), scale


class Detector:
    """A torchvision-contract detector in eval mode.

    Args:
        model: ``model(list of CHW float 0..1) -> [{boxes, scores, labels}]``: an eval-mode nn.Module, or a
            callable with the same contract (src.inference.onnx.OrtDetectorModel).
        eval_size: shorter side the image is resized to before the model (None: as is).
        max_size: cap on the longer side after that resize.
        score_threshold: boxes below it are dropped.
        max_detections: keep at most this many boxes per image (highest scores).
        device: where the model runs.
    """

    def __init__(self, model: nn.Module, *, eval_size: int | None = None, max_size: int | None = None,
                 score_threshold: float = 0.5, max_detections: int = 100, device: str | torch.device = "cpu",
                 batch_size: int = 4) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, nn.Module) else model
        self.eval_size, self.max_size = eval_size, max_size
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.batch_size = int(batch_size)
        # The model's `inference.detection` defaults (e.g. the live thresholds), read by src.detect and match-live.
        self.detection: dict = {}
        self.categories: list | None = None  # COCO categories: label i + 1 = categories[i]

    def _to_tensor(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[float, float]]:
        return detector_input(image, self.eval_size, self.max_size)

    def _finish(self, pred: dict, scale: tuple[float, float], hw: tuple[int, int]) -> Detections:
        scores = pred["scores"].detach().float().cpu().numpy()
        keep = np.flatnonzero(scores >= self.score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")][: self.max_detections]
        boxes = pred["boxes"].detach().float().cpu().numpy()[keep].reshape(-1, 4)
        boxes = boxes * np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
        h, w = hw
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        labels = pred.get("labels")
        labels = labels.detach().cpu().numpy()[keep] if labels is not None else np.ones(len(keep))
        return Detections(boxes.astype(np.float32), scores[keep].astype(np.float32), labels.astype(np.int64))

    @torch.inference_mode()
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        images = [check_rgb_image(im, f"image {i}") for i, im in enumerate(images)]
        out: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            tensors, scales = zip(*(self._to_tensor(im) for im in chunk))
            preds = self.model([t.to(self.device) for t in tensors])
            out += [self._finish(p, s, im.shape[:2]) for p, s, im in zip(preds, scales, chunk)]
        return out

    def detect(self, image: np.ndarray) -> Detections:
        return self.detect_batch([image])[0]


def load_detector(path: str | os.PathLike, *, score_threshold: float = 0.5, device: str = "cpu",
                  threads: int | None = None, **kwargs) -> Detector:
    """A Detector from a DetectionSystem checkpoint (``.ckpt``) or its ONNX export (``.onnx`` + its
    ``.inference.json``): eval size, detection defaults and categories from the model's inference settings."""
    if Path(path).suffix == ".onnx":
        from src.inference.onnx import OrtDetectorModel
        from src.inference.settings import read_sidecar

        settings = read_sidecar(path)
        if settings.kind != "detector":
            raise ValueError(f"{path} holds a {settings.kind}, not a detector")
        model = OrtDetectorModel(path, threads=threads)
    else:
        from src.inference.checkpoint import load_network

        model, settings = load_network(path, "detector")
    kwargs.setdefault("eval_size", settings.eval_size)
    kwargs.setdefault("max_size", settings.max_size)
    det = Detector(model, score_threshold=score_threshold, device=device, **kwargs)
    det.detection = dict(settings.detection)
    det.categories = settings.categories
    return det
