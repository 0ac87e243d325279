"""Detection transforms that move boxes with the pixels: multi-scale shorter-side resize, eval resize,
horizontal flip, to-tensor.

Each transform is `t(image, target) -> (image, target)` with image an RGB uint8 HxWx3 array (until `ToTensor`)
and target a dict whose "boxes" are float32 [N, 4] xyxy in pixels (other keys pass through). Box maps are exact
(per-axis scale of the actual output size, mirror about the width), so tests can compare them analytically.
Random choices use torch's RNG, which DataLoader workers and Lightning's seed_everything seed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from src.data.images import resize_to, shorter_side_shape

Target = dict


class Compose:
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, target: Target) -> tuple:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def resize_with_boxes(image: np.ndarray, target: Target, out_h: int, out_w: int) -> tuple:
    h, w = image.shape[:2]
    image = resize_to(image, out_h, out_w)
    boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
    scale = np.array([out_w / w, out_h / h, out_w / w, out_h / h], dtype=np.float32)
    return image, {**target, "boxes": boxes * scale}


class RandomShortestSideResize:
    """Multi-scale training: the shorter side becomes a random choice from `sizes`, the longer side at most
    `max_size` (as in torchvision references / Detectron2's ResizeShortestEdge)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes:
            raise ValueError("sizes must not be empty")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size

    def __call__(self, image: np.ndarray, target: Target) -> tuple:
        size = self.sizes[int(torch.randint(len(self.sizes), ()).item())] if len(self.sizes) > 1 else self.sizes[0]
        out_h, out_w = shorter_side_shape(*image.shape[:2], size, self.max_size)
        return resize_with_boxes(image, target, out_h, out_w)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(sizes={self.sizes}, max_size={self.max_size})"


class ShortestSideResize(RandomShortestSideResize):
    """Evaluation resize: one shorter side."""

    def __init__(self, size: int, max_size: int | None = None) -> None:
        super().__init__([size], max_size)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, target: Target) -> tuple:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return image, target
        w = image.shape[1]
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]  # x1' = W - x2, x2' = W - x1
        return np.ascontiguousarray(image[:, ::-1]), {**target, "boxes": boxes}

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p})"


class ToTensor:
    """uint8 HxWx3 -> float CHW in 0..1 (torchvision detectors normalise inside the model); boxes -> tensor."""

    def __call__(self, image: np.ndarray, target: Target) -> tuple:
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
        return img, {**target, "boxes": torch.as_tensor(np.asarray(target["boxes"], dtype=np.float32)).reshape(-1, 4)}


def train_transforms(sizes: Sequence[int], max_size: int | None = None, hflip_prob: float = 0.5) -> Compose:
    return Compose([RandomShortestSideResize(sizes, max_size), RandomHorizontalFlip(hflip_prob), ToTensor()])


def eval_transforms(size: int | None, max_size: int | None = None) -> Compose:
    """size=None keeps the image as it is."""
    return Compose(([ShortestSideResize(size, max_size)] if size else []) + [ToTensor()])
