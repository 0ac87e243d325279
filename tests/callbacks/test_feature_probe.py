"""The frozen-feature probe for classification: Lite0 features + logistic regression on the run's own lists.
Three colours with pixel noise are linearly separable in ImageNet features: the probe must get them right, and a
probe on shuffled training labels must not (so the number reflects the features, not a leak)."""

from types import SimpleNamespace

import pytest

from src.callbacks.baselines import FeatureProbeBaselines
from src.data.classification import ImageClassificationDataModule
from src.data.sources import LocalDataset
from tests.test_readme_commands import _image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _write(root, shuffle_train=False):
    lines = {"train": [], "val": [], "test": []}
    for label, colour in enumerate(COLOURS):
        for view in range(12):
            rel = f"images/{label}_{view}.png"
            _image(root / rel, colour, seed=100 * label + view)
            split = "train" if view < 6 else "val" if view < 9 else "test"
            lines[split].append(f"{rel} {(label + view) % 3 if shuffle_train and split == 'train' else label}")
    for split, rows in lines.items():
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("shuffle_train, bar", [(False, 0.99), (True, None)])
def test_probe_separates_what_the_features_separate(tmp_path, shuffle_train, bar):
    _write(tmp_path, shuffle_train)
    dm = ImageClassificationDataModule(LocalDataset(str(tmp_path)), "train.txt", "val.txt", "test.txt")
    cb = FeatureProbeBaselines(train_per_class=None, image_size=32)
    cb.on_fit_start(SimpleNamespace(ckpt_path=None, fast_dev_run=False, is_global_zero=True, datamodule=dm,
                                    loggers=[]), None)
    assert set(cb.report_metrics) == {f"linear_probe/{s}/{m}" for s in ("val", "test") for m in ("acc", "f1")}
    if bar is not None:
        assert cb.report_metrics["linear_probe/test/acc"] >= bar, cb.report_metrics
    else:  # labels unrelated to the images: near chance (1/3), far from the clean probe
        assert cb.report_metrics["linear_probe/test/acc"] <= 0.7, cb.report_metrics
