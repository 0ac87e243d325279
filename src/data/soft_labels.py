"""Soft labels keyed by sample uid (e.g. gathered out-of-fold predictions) mixed with one-hot labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from src.data import keys
from src.data.classification import ImageClassificationDataModule
from src.data.datasets import ImageDataset
from src.data.readers import DataFormatError

SOFT_LABEL_FILE_KEYS = ("uids", "probs")


def load_soft_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An .npz with `uids` [N] (str) and `probs` [N, C] (rows sum to 1), as scripts/gather_oof.py writes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"soft-label file not found: {path} (run scripts/gather_oof.py first)")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in SOFT_LABEL_FILE_KEYS if k not in z.files]
        if missing:
            raise DataFormatError(f"{path}: missing arrays {missing}; has {z.files}")
        uids, probs = z["uids"].astype(str), z["probs"].astype(np.float32)
    if probs.ndim != 2 or probs.shape[0] != uids.shape[0]:
        raise DataFormatError(f"{path}: probs shape {probs.shape} does not match {uids.shape[0]} uids")
    bad = np.flatnonzero(np.abs(probs.sum(1) - 1) > 1e-3)
    if bad.size:
        raise DataFormatError(f"{path}: row for uid {uids[bad[0]]!r} sums to {probs[bad[0]].sum():.4f}, not 1")
    return dict(zip(uids.tolist(), probs))


class SoftLabelDataset(Dataset):
    """Adds `soft_label` = weight * soft + (1 - weight) * one_hot(label) to each item of an ImageDataset."""

    def __init__(self, base: ImageDataset, soft: dict[str, np.ndarray], num_classes: int, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"soft_weight must be in [0, 1], got {weight}")
        missing = [s.uid for s in base.samples if s.uid not in soft]
        if missing:
            raise DataFormatError(f"{len(missing)} training samples have no soft label, e.g. uid {missing[0]!r}")
        width = len(next(iter(soft.values())))
        if width != num_classes:
            raise DataFormatError(f"soft labels have {width} classes, data.num_classes={num_classes}")
        self.base, self.labels, self.samples = base, base.labels, base.samples
        eye = np.eye(num_classes, dtype=np.float32)
        self.targets = np.stack([weight * soft[s.uid] + (1 - weight) * eye[s.label] for s in base.samples])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        out = self.base[item]
        if out is not None:
            out[keys.SOFT_LABEL] = torch.from_numpy(self.targets[int(out[keys.INDEX])])
        return out


class SoftLabelImageClassificationDataModule(ImageClassificationDataModule):
    """Training batches carry `soft_label`, a mixture of soft labels (by uid) and one-hot labels; `soft_weight`
    is the soft share (the clothing-style solution's 2:8 soft:hard is 0.2). Val/test are unchanged."""

    def __init__(self, *args, soft_labels: str, soft_weight: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.num_classes is None:
            raise ValueError("SoftLabelImageClassificationDataModule needs num_classes")
        self.soft_labels, self.soft_weight = soft_labels, float(soft_weight)

    def _dataset(self, split: str):
        ds = super()._dataset(split)
        if split != "train":
            return ds
        return SoftLabelDataset(ds, load_soft_labels(self.soft_labels), self.num_classes, self.soft_weight)


def gather_oof(prediction_files: list[str | os.PathLike], expected_uids: list[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the folds' test_probs.npz (each fold's held-out predictions) into (uids, probs, labels).
    Every uid must appear exactly once; with `expected_uids` (the train list), every one must be covered."""
    if not prediction_files:
        raise FileNotFoundError("no out-of-fold prediction files given")
    uids, probs, labels, origin = [], [], [], {}
    for f in prediction_files:
        with np.load(f, allow_pickle=False) as z:
            for k in ("uids", "probs", "labels"):
                if k not in z.files:
                    raise DataFormatError(f"{f}: missing array {k!r} (not written by save_test_predictions?)")
            u = z["uids"].astype(str).tolist()
            p, y = z["probs"].astype(np.float32), z["labels"].astype(np.int64)
        for uid in u:
            if uid in origin:
                raise DataFormatError(f"uid {uid!r} predicted in both {origin[uid]} and {f} (overlapping folds?)")
            origin[uid] = f
        if probs and p.shape[1] != probs[0].shape[1]:
            raise DataFormatError(f"{f}: {p.shape[1]} classes, earlier files have {probs[0].shape[1]}")
        uids += u
        probs.append(p)
        labels.append(y)
    if expected_uids is not None:
        missing = sorted(set(expected_uids) - set(origin))
        if missing:
            raise DataFormatError(f"{len(missing)} training samples lack an out-of-fold prediction, e.g. {missing[0]!r}"
                                  " (a fold run missing or failed?)")
    return np.asarray(uids), np.concatenate(probs), np.concatenate(labels)
