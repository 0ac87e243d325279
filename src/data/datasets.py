"""Map-style datasets over samples read by `readers`; return batch dicts keyed by `keys`."""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from src.data import keys
from src.data.images import ImageReadError, SkipCounter, read_rgb
from src.data.readers import Sample


class ImageDataset(Dataset):
    """Images with integer labels. An index may be an int, or `(int, (h, w))` when a batch sampler chooses the
    size of each batch (aspect-ratio buckets); the image is then resized to (h, w) before `transform`.

    on_error="skip": an unreadable image yields None (dropped by `collate_skip_none`) and is counted in the log;
    on_error="raise": it is fatal."""

    def __init__(self, samples: list[Sample], transform: Callable | None = None, on_error: str = "skip") -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.samples = samples
        self.transform = transform
        self.on_error = on_error
        self.skipped = SkipCounter()
        self.labels = np.array([s.label for s in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def image_size(self, idx: int) -> tuple[int, int]:
        """(h, w) without decoding the whole image."""
        img = cv2.imread(self.samples[idx].path, cv2.IMREAD_REDUCED_COLOR_8)
        if img is None:
            return (1, 1)
        # The reduced decode rounds; the aspect ratio is what callers need.
        return img.shape[0], img.shape[1]

    def __getitem__(self, item: Any) -> dict | None:
        idx, size = (item, None) if isinstance(item, (int, np.integer)) else (int(item[0]), item[1])
        sample = self.samples[idx]
        try:
            img = read_rgb(sample.path)
        except ImageReadError as e:
            if self.on_error == "raise":
                raise
            self.skipped.skip(sample.path, e)
            return None
        if size is not None:
            img = cv2.resize(img, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        else:
            img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255)
        return {keys.IMAGE: img, keys.LABEL: torch.tensor(sample.label), keys.INDEX: torch.tensor(idx)}


def collate_skip_none(batch: list[dict | None]) -> dict | None:
    """default_collate over the readable samples; None when the whole batch was unreadable."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None
