"""DataModule for image classification from image lists or ImageFolder trees (real data or the retail world)."""

from __future__ import annotations

import logging
from typing import Callable

from torch.utils.data import DataLoader

from src.data.datasets import ImageDataset, collate_skip_none
from src.data.readers import Sample, read_samples
from src.data.split_datamodule import SplitDataModule, check_label_range, classes_from_labels

log = logging.getLogger(__name__)


class ImageClassificationDataModule(SplitDataModule):
    """`source` provides `prepare()` and `root`; `train`/`val`/`test` are list files (or folders) relative to it.
    `sampler` is an optional callable `dataset -> Sampler` (e.g. class-balanced), used for training only."""

    def __init__(
        self,
        source,
        train: str,
        val: str,
        test: str | None = None,
        fmt: str = "image_list",
        num_classes: int | None = None,
        image_size: int | None = None,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        sampler: Callable | None = None,
        on_error: str = "skip",
        pin_memory: bool = False,
    ) -> None:
        super().__init__(source, batch_size, eval_batch_size, num_workers, on_error, pin_memory)
        self.paths = {"train": train, "val": val, "test": test or val}
        self.fmt = fmt
        self.num_classes = num_classes
        self.image_size = image_size  # transform configs interpolate it; kept for reports and exports
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.sampler_factory = sampler

    def infer_num_classes(self) -> int:
        """Classes the model needs when `num_classes` is not given: largest training label + 1."""
        self.num_classes = classes_from_labels(self._read("train"))
        return self.num_classes

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of 'train', 'val' or 'test' as listed (no transform, no image decoded)."""
        return self._read(split)

    def _read(self, split: str) -> list[Sample]:
        """The samples of a split's list file, labels checked against `num_classes` (file named on error)."""
        path = self.source.root / self.paths[split]
        samples = read_samples(self.fmt, path, self.source.root)
        check_label_range(samples, self.num_classes, path)
        return samples

    def _dataset(self, split: str) -> ImageDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return ImageDataset(self._read(split), transform, on_error=self.on_error)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = self.sampler_factory(ds) if (split == "train" and self.sampler_factory) else None
        return DataLoader(
            ds,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_skip_none,
            pin_memory=self.pin_memory,
            drop_last=split == "train" and len(ds) > self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
