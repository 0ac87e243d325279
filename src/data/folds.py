"""Deterministic stratified k-fold splits and a DataModule that trains on k-1 folds and tests on the held-out one
(out-of-fold predictions for self-distillation)."""

from __future__ import annotations

import numpy as np

from src.data.classification import ImageClassificationDataModule
from src.data.datasets import ImageDataset
from src.data.readers import Sample


def stratified_folds(labels, num_folds: int, seed: int = 0) -> np.ndarray:
    """fold id in [0, num_folds) per sample: each class is shuffled (seeded) and dealt round-robin, the dealing
    continuing across classes, so every fold gets each class's share to within one sample and fold sizes
    differ by at most one. Same labels, same seed -> same folds, on every machine."""
    labels = np.asarray(labels, dtype=np.int64)
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if labels.size < num_folds:
        raise ValueError(f"{labels.size} samples cannot fill {num_folds} folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(labels.size, dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        folds[idx] = (offset + np.arange(idx.size)) % num_folds
        offset += idx.size
    return folds


class KFoldImageClassificationDataModule(ImageClassificationDataModule):
    """Train on the folds != `fold` of the train list, validate on the val list (checkpoint selection never sees
    the held-out fold), test on the held-out fold with the eval transform, so `test` predictions are the
    out-of-fold predictions for the samples of fold `fold`."""

    def __init__(self, *args, fold: int = 0, num_folds: int = 5, fold_seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= fold < num_folds:
            raise ValueError(f"data.fold must be in [0, {num_folds}), got {fold}")
        self.fold, self.num_folds, self.fold_seed = int(fold), int(num_folds), int(fold_seed)

    def fold_samples(self) -> tuple[list[Sample], list[Sample]]:
        """(training samples, held-out samples) of this fold."""
        samples = self._read("train")
        folds = stratified_folds([s.label for s in samples], self.num_folds, self.fold_seed)
        return ([s for s, f in zip(samples, folds) if f != self.fold],
                [s for s, f in zip(samples, folds) if f == self.fold])

    def _dataset(self, split: str) -> ImageDataset:
        if split == "val":
            return ImageDataset(self._read("val"), self.eval_transform, on_error=self.on_error)
        train, held_out = self.fold_samples()
        if split == "train":
            return ImageDataset(train, self.train_transform, on_error=self.on_error)
        return ImageDataset(held_out, self.eval_transform, on_error=self.on_error)
