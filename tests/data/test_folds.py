"""Stratified folds: a deterministic partition, each class spread evenly; the k-fold DataModule's train and
held-out test sets are disjoint and the held-out sets of all folds cover the train list once."""

from pathlib import Path

import numpy as np
import pytest

from src.data.folds import KFoldImageClassificationDataModule, stratified_folds


def test_partition_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [30, 13, 7, 2])
    f = stratified_folds(labels, 3, seed=5)
    assert np.array_equal(f, stratified_folds(labels, 3, seed=5))
    assert not np.array_equal(f, stratified_folds(labels, 3, seed=6))
    assert sorted(np.bincount(f)) in ([17, 17, 18], [17, 18, 17])  # sizes differ by at most one
    for c in range(4):
        per_fold = np.bincount(f[labels == c], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1
    with pytest.raises(ValueError):
        stratified_folds(labels, 1)


class Source:
    def __init__(self, root):
        self.root = Path(root)

    def prepare(self):
        pass


def test_kfold_datamodule_heldout_covers_train_once(tmp_path):
    lines = [f"img{i}.jpg {i % 3} u{i}" for i in range(20)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text("img0.jpg 0 v0\n")
    for i in range(20):
        (tmp_path / f"img{i}.jpg").write_bytes(b"x")
    seen = []
    for fold in range(3):
        dm = KFoldImageClassificationDataModule(Source(tmp_path), "train.txt", "val.txt", fold=fold, num_folds=3)
        dm.setup("fit")
        dm.setup("test")
        train = {s.uid for s in dm.datasets["train"].samples}
        test = {s.uid for s in dm.datasets["test"].samples}
        assert not train & test and len(train | test) == 20
        assert [s.uid for s in dm.datasets["val"].samples] == ["v0"]
        seen += sorted(test)
    assert sorted(seen) == sorted(f"u{i}" for i in range(20))
    with pytest.raises(ValueError, match="fold"):
        KFoldImageClassificationDataModule(Source(tmp_path), "train.txt", "val.txt", fold=3, num_folds=3)
