"""Image loading that survives bad files: a corrupt or missing image is skipped and counted, or fatal on request."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

log = logging.getLogger(__name__)


class ImageReadError(OSError):
    pass


def read_rgb(path: str) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3. Raises ImageReadError naming the file."""
    data = np.fromfile(path, dtype=np.uint8) if _exists(path) else None
    if data is None:
        raise ImageReadError(f"image file not found: {path}")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageReadError(f"cannot decode image (corrupt or unsupported format): {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


class SkipCounter:
    """Counts skipped images in this process and logs each one with the running total."""

    def __init__(self) -> None:
        self.count = 0

    def skip(self, path: str, err: Exception) -> None:
        self.count += 1
        log.warning("Skipped unreadable image %s (%s); %d skipped so far in this process", path, err, self.count)


def check_rgb_image(image, name: str = "image") -> np.ndarray:
    """The one check every serving entry applies: an RGB uint8 HxWx3 array with at least one pixel."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(f"{name}: expected an RGB uint8 HxWx3 array, got {desc}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    return image


def shorter_side_shape(h: int, w: int, short_side: int | None, max_size: int | None = None, *,
                       shrink_only: bool = False) -> tuple[int, int]:
    """(h, w) with the shorter side at `short_side`, the longer one capped at `max_size` (torchvision's rule).
    `short_side` None or 0: unchanged; `shrink_only`: never enlarge (upsampling adds no detail)."""
    if not short_side or (shrink_only and min(h, w) <= short_side):
        return h, w
    scale = short_side / min(h, w)
    if max_size is not None and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def resize_to(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """cv2 resize with INTER_AREA when shrinking (no aliasing) and linear when enlarging."""
    h, w = image.shape[:2]
    if (out_h, out_w) == (h, w):
        return image
    interp = cv2.INTER_AREA if out_h * out_w < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interp)


def resize_shorter_side(image: np.ndarray, short_side: int | None, max_size: int | None = None, *,
                        shrink_only: bool = False) -> tuple[np.ndarray, tuple[float, float]]:
    """The image resized by :func:`shorter_side_shape`, and (sx, sy) = original / resized, to map boxes back."""
    h, w = image.shape[:2]
    out_h, out_w = shorter_side_shape(h, w, short_side, max_size, shrink_only=shrink_only)
    return resize_to(image, out_h, out_w), (w / out_w, h / out_h)


def crop_box(image: np.ndarray, box) -> np.ndarray:
    """The pixels of an xyxy float box, rounded outwards and clipped to the image, at least 1x1."""
    h, w = image.shape[:2]
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(w, max(x0 + 1, math.ceil(box[2]))), min(h, max(y0 + 1, math.ceil(box[3])))
    return np.ascontiguousarray(image[y0:y1, x0:x1])
