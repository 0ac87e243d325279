"""DataModule for metric learning: train on identities, evaluate open-set retrieval (query vs gallery of
identities never seen in training). Validation/test loaders are [query, gallery]; with `*_gallery=None` the
query set is its own gallery and self-matches are dropped by the evaluation callback."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from src.data.datasets import ImageDataset, collate_skip_none
from src.data.readers import read_samples
from src.data.split_datamodule import SplitDataModule, check_label_range, classes_from_labels

QUERY, GALLERY = 0, 1  # dataloader_idx of the evaluation loaders


def image_aspects(dataset: ImageDataset) -> np.ndarray:
    """h / w of every image from its header only (no decode)."""
    out = np.ones(len(dataset))
    for i, s in enumerate(dataset.samples):
        try:
            with Image.open(s.path) as im:
                w, h = im.size
            out[i] = h / max(w, 1)
        except OSError:
            pass  # unreadable: the dataset skips it at load time; any bucket will do
    return out


class RetrievalDataModule(SplitDataModule):
    def __init__(
        self,
        source,
        train: str | Sequence[str],
        val_query: str,
        val_gallery: str | None = None,
        test_query: str | None = None,
        test_gallery: str | None = None,
        fmt: str = "image_list",
        num_classes: int | None = None,
        image_size: int = 224,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        batch_sampler: Callable | None = None,
        num_workers: int = 0,
        on_error: str = "skip",
        pin_memory: bool = False,
    ) -> None:
        super().__init__(source, batch_size, eval_batch_size, num_workers, on_error, pin_memory)
        self.paths = {"train": train, "val_query": val_query, "val_gallery": val_gallery,
                      "test_query": test_query or val_query,
                      "test_gallery": test_gallery if test_query else val_gallery}
        self.fmt = fmt
        self.num_classes = num_classes  # training identities (margin-head classes); labels must be below it
        self.image_size = image_size
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_sampler_factory = batch_sampler  # partial: (labels=, aspects=) -> batch sampler

    def _samples(self, split: str) -> list:
        """The split's list file, or the concatenation of several (e.g. shopper photos + studio shots)."""
        files = self.paths[split]
        samples = []
        for rel in [files] if isinstance(files, (str, os.PathLike)) else files:
            part = read_samples(self.fmt, self.source.root / rel, self.source.root)
            if split == "train":
                check_label_range(part, self.num_classes, self.source.root / rel)
            samples.extend(part)
        return samples

    def infer_num_classes(self) -> int:
        """Margin-head classes when `num_classes` is not given: largest training label + 1."""
        self.num_classes = classes_from_labels(self._samples("train"))
        return self.num_classes

    def _dataset(self, split: str) -> ImageDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return ImageDataset(self._samples(split), transform, on_error=self.on_error)

    def stage_splits(self, stage: str | None) -> list[str]:
        """fit (and None): train + val query/gallery; validate: val's; test/predict: test's (those given)."""
        prefix = "test" if stage in ("test", "predict") else "val"
        return (["train"] if stage in ("fit", None) else []) + [
            f"{prefix}_{kind}" for kind in ("query", "gallery") if self.paths[f"{prefix}_{kind}"]]

    @property
    def num_train_identities(self) -> int:
        return int(np.unique(self.dataset("train").labels).size)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        common = dict(num_workers=self.num_workers, collate_fn=collate_skip_none, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0)
        if self.batch_sampler_factory is not None:
            sampler = self.batch_sampler_factory(labels=ds.labels, aspects=image_aspects(ds))
            return DataLoader(ds, batch_sampler=sampler, **common)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, drop_last=len(ds) > self.batch_size, **common)

    def _eval_loaders(self, prefix: str) -> list[DataLoader]:
        loaders = []
        for kind in ("query", "gallery"):
            if not self.paths[f"{prefix}_{kind}"]:
                continue
            ds = self.dataset(f"{prefix}_{kind}")
            # Custom batch samplers switch off Lightning's sampler injection, so shard evaluation here.
            sampler = DistributedSampler(ds, shuffle=False) if dist.is_available() and dist.is_initialized() else None
            loaders.append(DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, sampler=sampler,
                                      num_workers=self.num_workers, collate_fn=collate_skip_none,
                                      pin_memory=self.pin_memory))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def eval_dataset(self, stage: str, dataloader_idx: int) -> ImageDataset:
        prefix = "test" if stage == "test" else "val"
        kind = "query" if dataloader_idx == QUERY else "gallery"
        return self.dataset(f"{prefix}_{kind}")
