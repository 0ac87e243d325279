"""Detection transforms that move boxes with the pixels: multi-scale shorter-side resize, eval resize,
horizontal flip, to-tensor.

A transform is `t(image, target) -> (image, target)`, composed by torchvision's `v2.Compose`. The resize is ours
(src.data.images: the one shorter-side rule, which serving uses too; torchvision's v2.Resize truncates the long
side where ours rounds, e.g. 240x320 -> 608x810 vs 608x811, and resamples differently): it takes an RGB uint8 HxWx3
array and a target dict whose "boxes" are float32 [N, 4] xyxy in pixels (other keys pass through) and scales the
boxes by the actual output size. `ToTensor` then makes the image a `tv_tensors.Image` and the boxes
`tv_tensors.BoundingBoxes`, which torchvision's `v2.RandomHorizontalFlip` mirrors together (x1' = W - x2), and
`v2.ToPureTensor` hands plain tensors on. Random choices use torch's RNG, which DataLoader workers and Lightning's
seed_everything seed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from src.data.images import resize_to, shorter_side_shape

Target = dict


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


class ToTensor:
    """uint8 HxWx3 -> float CHW in 0..1 as a `tv_tensors.Image` (torchvision detectors normalise inside the model);
    boxes -> `tv_tensors.BoundingBoxes` (xyxy on that image), so v2 transforms move them with the pixels."""

    def __call__(self, image: np.ndarray, target: Target) -> tuple:
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
        boxes = torch.as_tensor(np.asarray(target["boxes"], dtype=np.float32)).reshape(-1, 4)
        return tv_tensors.Image(img), {**target, "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY",
                                                                                  canvas_size=tuple(img.shape[-2:]))}


def train_transforms(sizes: Sequence[int], max_size: int | None = None, hflip_prob: float = 0.5) -> v2.Compose:
    flip = [v2.RandomHorizontalFlip(hflip_prob)] if hflip_prob > 0 else []  # v2's flip draws a number even at p=0
    return v2.Compose([RandomShortestSideResize(sizes, max_size), ToTensor(), *flip, v2.ToPureTensor()])


def eval_transforms(size: int | None, max_size: int | None = None) -> v2.Compose:
    """size=None keeps the image as it is."""
    return v2.Compose(([ShortestSideResize(size, max_size)] if size else []) + [ToTensor(), v2.ToPureTensor()])
