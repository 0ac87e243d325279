"""Fashion-MNIST (real clothing photos, Debian package `dataset-fashion-mnist`) from its IDX files.

Converted once to PNG files and image lists (`path label uid`) rather than served by a DataModule of its own:
the ImageClassificationDataModule, its albumentations transforms, samplers, k-fold and soft-label variants,
`src.eval` data_overrides and the reports then work on it unchanged. The full conversion takes ~15 s and
~280 MB of disk (70,000 small files); it is cached under `<data_dir>/<tag>/` (tag = hash of the parameters),
written in a temporary folder and renamed into place like the generated worlds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from src.data.readers import DataFormatError

log = logging.getLogger(__name__)
DEFAULT_RAW_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CONVERTER_VERSION = 3  # 2: open-set retrieval lists; 3: every kind of item on both sides, 300 queries a class


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; `.gz` is decompressed). Magic: two zero bytes, a dtype code and
    the number of dimensions, then one big-endian uint32 per dimension, then the data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: unknown IDX data type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFormatError(f"{path}: shape {shape} needs {expected} data bytes, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def find_idx(raw_dir: str | os.PathLike, name: str) -> Path:
    raw_dir = Path(raw_dir)
    for candidate in (raw_dir / f"{name}.gz", raw_dir / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{raw_dir}: no {name}[.gz]; install the real data with `bash scripts/install_fashion_mnist.sh` "
        f"(Debian package dataset-fashion-mnist)")


def missing_files(raw_dir: str | os.PathLike = DEFAULT_RAW_DIR) -> list[str]:
    """Names of the four IDX files (plain or .gz) not found in `raw_dir`; empty when the data is installed."""
    raw_dir = Path(raw_dir)
    return [n for n in FILES.values() if not ((raw_dir / f"{n}.gz").is_file() or (raw_dir / n).is_file())]


def load_split(raw_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N] int64) of split 'train' or 'test'."""
    images = read_idx(find_idx(raw_dir, FILES[f"{split}_images"]))
    labels = read_idx(find_idx(raw_dir, FILES[f"{split}_labels"])).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataFormatError(f"{raw_dir}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataFormatError(f"{raw_dir}: {split} labels outside [0, {len(CLASSES)})")
    return images, labels


def _per_class_subset(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first `per_class` samples of each class (the files are already shuffled)."""
    if per_class is None:
        return np.arange(labels.size)
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASSES))])
    return np.sort(keep)


# Open-set retrieval splits: {prefix: (training classes, unseen evaluation classes)}.
# "open": new products of kinds training has seen, as a shop adds them: tops (T-shirt, pullover | dress, coat,
#   shirt), footwear (sandal, sneaker | ankle boot) and the rest (trouser | bag) fall on both sides.
# "open_disjoint": classes 0-4 | 5-9, where the unseen side is mostly a kind never trained on (footwear, bags).
OPEN_SET_SPLITS = {"open": ((0, 1, 2, 5, 7), (3, 4, 6, 8, 9)), "open_disjoint": ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))}
OPEN_SET_TRAIN_PER_CLASS, OPEN_SET_GALLERY, OPEN_SET_QUERIES = 400, 10, 300


class FashionMNIST:
    """Source for ImageClassificationDataModule. Lists: train.txt (the first 60000 - num_val training images,
    optionally `train_per_class` of each class), val.txt (the last `num_val` training images, optionally
    `val_per_class`), test.txt (the official 10,000-image test split, optionally `test_per_class`)."""

    def __init__(self, data_dir: str, raw_dir: str = DEFAULT_RAW_DIR, num_val: int = 5000,
                 train_per_class: int | None = None, val_per_class: int | None = None,
                 test_per_class: int | None = None) -> None:
        self.data_dir, self.raw_dir = Path(data_dir), Path(raw_dir)
        self.params = {"version": CONVERTER_VERSION, "num_val": int(num_val), "train_per_class": train_per_class,
                       "val_per_class": val_per_class, "test_per_class": test_per_class}

    @property
    def root(self) -> Path:
        blob = json.dumps(self.params, sort_keys=True)
        return self.data_dir / f"fmnist-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def prepare(self) -> None:
        if (self.root / "DONE").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}-", dir=self.data_dir))
        try:
            log.info("Converting Fashion-MNIST from %s into %s", self.raw_dir, self.root)
            self._convert(tmp)
            (tmp / "DONE").write_text("ok\n")
            try:
                os.replace(tmp, self.root)
            except OSError:
                if not (self.root / "DONE").exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _convert(self, out: Path) -> None:
        train_x, train_y = load_split(self.raw_dir, "train")
        test_x, test_y = load_split(self.raw_dir, "test")
        n_val = self.params["num_val"]
        if not 0 < n_val < train_x.shape[0]:
            raise ValueError(f"num_val must be in (0, {train_x.shape[0]}), got {n_val}")
        splits = {
            "train": (train_x[:-n_val], train_y[:-n_val], 0, self.params["train_per_class"]),
            "val": (train_x[-n_val:], train_y[-n_val:], train_x.shape[0] - n_val, self.params["val_per_class"]),
            "test": (test_x, test_y, 0, self.params["test_per_class"]),
        }
        for split, (x, y, offset, per_class) in splits.items():
            folder = "test" if split == "test" else "train"
            (out / "images" / folder).mkdir(parents=True, exist_ok=True)
            lines = []
            for i in _per_class_subset(y, per_class):
                rel = f"images/{folder}/{offset + i:05d}.png"
                cv2.imwrite(str(out / rel), x[i])
                lines.append(f"{rel} {int(y[i])} {folder}_{offset + i:05d}")
            (out / "lists").mkdir(exist_ok=True)
            (out / "lists" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        self._write_open_set_lists(out, train_x, train_y, train_x.shape[0] - n_val, test_x, test_y)
        (out / "classes.json").write_text(json.dumps(list(CLASSES), indent=1))

    @staticmethod
    def _write_open_set_lists(out: Path, train_x: np.ndarray, train_y: np.ndarray, val_start: int, test_x: np.ndarray,
                              test_y: np.ndarray) -> None:
        """Open-set retrieval lists for each split of OPEN_SET_SPLITS: OPEN_SET_TRAIN_PER_CLASS training photos
        of each training class; val from the held-out training images and test from the official test split,
        both of the unseen classes only: per class the first OPEN_SET_GALLERY images are the gallery and the
        next OPEN_SET_QUERIES the queries (300 queries a class: one query is 0.0007 of recall@1)."""
        lines = {}
        for prefix, (train_classes, eval_classes) in OPEN_SET_SPLITS.items():
            rows = lines.setdefault(f"{prefix}_train", [])
            for c in train_classes:
                rows += [f"images/train/{i:05d}.png {c} train_{i:05d}"
                         for i in np.flatnonzero(train_y[:val_start] == c)[:OPEN_SET_TRAIN_PER_CLASS]]
            for split, ys, folder, offset in (("val", train_y[val_start:], "train", val_start),
                                              ("test", test_y, "test", 0)):
                for c in eval_classes:
                    idx = offset + np.flatnonzero(ys == c)
                    for kind, chosen in (("gallery", idx[:OPEN_SET_GALLERY]),
                                         ("query", idx[OPEN_SET_GALLERY:OPEN_SET_GALLERY + OPEN_SET_QUERIES])):
                        lines.setdefault(f"{prefix}_{split}_{kind}", []).extend(
                            f"images/{folder}/{i:05d}.png {c} {folder}_{i:05d}" for i in chosen)
        for name, rows in lines.items():
            (out / "lists" / f"{name}.txt").write_text("\n".join(rows) + "\n")
        for name in lines:  # images the per-class subsets of the classification lists may have left out
            for row in lines[name]:
                rel = row.split()[0]
                if not (out / rel).exists():
                    folder, i = rel.split("/")[1], int(rel.split("/")[2][:5])
                    cv2.imwrite(str(out / rel), (test_x if folder == "test" else train_x)[i])
