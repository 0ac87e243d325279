"""What the classification, retrieval and detection DataModules share: a source to prepare, one dataset per
split built once on demand, the splits each Lightning stage needs, and the label-range check of list files."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import lightning as L

from src.data.readers import DataFormatError, Sample

# The splits a Lightning stage reads (None: all of them).
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
ALL_SPLITS = ("train", "val", "test")


def check_label_range(samples: Sequence[Sample], num_classes: int | None, path: str | os.PathLike) -> None:
    """Every label below `num_classes` (None: no check); the error names the file and the first bad sample."""
    if num_classes is None:
        return
    bad = next((s for s in samples if s.label >= num_classes), None)
    if bad is not None:
        raise DataFormatError(f"{path}: label {bad.label} of {bad.uid} is >= data.num_classes={num_classes}")


def classes_from_labels(samples: Iterable[Sample]) -> int:
    """Classes a model needs for these labels: largest label + 1."""
    return int(max(s.label for s in samples)) + 1


class SplitDataModule(L.LightningDataModule):
    """`source` has `prepare()` and `root`. Subclasses build a split's dataset in `_dataset(split)`;
    `dataset(split)` builds it once, `setup(stage)` builds the stage's splits. The loader settings are
    common: batch sizes (eval defaults to the training one), workers, unreadable-image policy, pinned memory."""

    def __init__(self, source, batch_size: int, eval_batch_size: int | None = None, num_workers: int = 0,
                 on_error: str = "skip", pin_memory: bool = False) -> None:
        super().__init__()
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.on_error, self.pin_memory = num_workers, on_error, pin_memory
        self.datasets: dict = {}

    def prepare_data(self) -> None:
        self.source.prepare()

    def stage_splits(self, stage: str | None) -> Sequence[str]:
        return STAGE_SPLITS.get(stage, ALL_SPLITS)

    def _dataset(self, split: str):
        raise NotImplementedError

    def dataset(self, split: str):
        if split not in self.datasets:
            self.datasets[split] = self._dataset(split)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in self.stage_splits(stage):
            self.dataset(split)
