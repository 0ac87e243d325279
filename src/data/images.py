"""Image loading that survives bad files: a corrupt or missing image is skipped and counted, or fatal on request."""

from __future__ import annotations

import logging

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
