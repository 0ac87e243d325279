"""Pixel logistic-regression baseline: learns a linearly separable toy set, and the callback reports val/test
accuracy under the `pixel_logreg/` prefix that src.train prints beside the returned model."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from src.callbacks.baselines import PixelBaselines
from src.data.readers import Sample
from src.models.pixel_baseline import per_class_subset, pixel_matrix


def _write_images(folder, n_per_class: int, seed: int) -> list[Sample]:
    """Class 0: bright left half, class 1: bright right half, class 2: bright top half; plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for c in range(3):
        for i in range(n_per_class):
            img = rng.integers(0, 80, (28, 28)).astype(np.uint8)
            region = {0: (slice(None), slice(0, 14)), 1: (slice(None), slice(14, None)), 2: (slice(0, 14), slice(None))}
            img[region[c]] += 120
            path = folder / f"{c}_{i}.png"
            cv2.imwrite(str(path), img)
            samples.append(Sample(str(path), c, f"{c}_{i}"))
    return samples


def test_pixel_matrix_resizes_and_scales(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((56, 56), 255, np.uint8))
    x = pixel_matrix([str(tmp_path / "a.png")], 28)
    assert x.shape == (1, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0)  # 255 -> 1.0 exactly in float32 (INTER_AREA of a constant is constant)
    with pytest.raises(FileNotFoundError):
        pixel_matrix([str(tmp_path / "missing.png")], 28)


def test_per_class_subset_caps_each_class():
    labels = np.array([0] * 10 + [1] * 3)
    keep = per_class_subset(labels, 4)
    assert np.bincount(labels[keep]).tolist() == [4, 3]
    assert per_class_subset(labels, None).size == 13


def test_callback_reports_val_and_test_accuracy(tmp_path):
    splits = {"train": _write_images(tmp_path / "train", 40, 0), "val": _write_images(tmp_path / "val", 10, 1),
              "test": _write_images(tmp_path / "test", 10, 2)}
    dm = SimpleNamespace(split_samples=lambda split: splits[split])
    trainer = SimpleNamespace(ckpt_path=None, fast_dev_run=False, is_global_zero=True, datamodule=dm, loggers=[])
    cb = PixelBaselines(train_per_class=30)
    cb.on_fit_start(trainer, None)
    assert set(cb.report_metrics) == {f"pixel_logreg/{s}/{m}" for s in ("val", "test") for m in ("acc", "f1")}
    assert cb.report_metrics["pixel_logreg/test/acc"] > 0.9  # separable by mean brightness of halves
    cb2 = PixelBaselines()
    cb2.on_fit_start(SimpleNamespace(**{**vars(trainer), "ckpt_path": "resume.ckpt"}), None)
    assert cb2.report_metrics == {}  # not recomputed on resume
