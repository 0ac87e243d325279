"""Soft labels by uid are mixed with one-hot labels; gather_oof refuses overlaps and gaps."""

import numpy as np
import pytest
import torch

from src.data import keys
from src.data.readers import DataFormatError, Sample
from src.data.soft_labels import SoftLabelDataset, gather_oof, load_soft_labels


class Base:
    def __init__(self, samples):
        self.samples = samples
        self.labels = np.array([s.label for s in samples])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return {keys.IMAGE: torch.zeros(1), keys.LABEL: torch.tensor(self.samples[i].label), keys.INDEX: torch.tensor(i)}


def test_mixture_of_soft_and_one_hot(tmp_path):
    samples = [Sample("a", 0, "u0"), Sample("b", 2, "u1")]
    soft = {"u0": np.array([0.2, 0.5, 0.3], np.float32), "u1": np.array([0.0, 0.0, 1.0], np.float32)}
    ds = SoftLabelDataset(Base(samples), soft, 3, weight=0.2)
    assert np.allclose(ds[0][keys.SOFT_LABEL].numpy(), [0.2 * 0.2 + 0.8, 0.2 * 0.5, 0.2 * 0.3])
    assert np.allclose(ds[1][keys.SOFT_LABEL].numpy(), [0, 0, 1])
    with pytest.raises(DataFormatError, match="no soft label"):
        SoftLabelDataset(Base(samples + [Sample("c", 1, "u9")]), soft, 3, 0.2)


def test_gather_and_load_roundtrip(tmp_path):
    f1, f2 = tmp_path / "f1.npz", tmp_path / "f2.npz"
    np.savez(f1, uids=np.array(["a", "b"]), probs=np.array([[0.9, 0.1], [0.4, 0.6]]), labels=np.array([0, 1]))
    np.savez(f2, uids=np.array(["c"]), probs=np.array([[0.5, 0.5]]), labels=np.array([1]))
    uids, probs, labels = gather_oof([f1, f2], expected_uids=["a", "b", "c"])
    assert uids.tolist() == ["a", "b", "c"] and probs.shape == (3, 2) and labels.tolist() == [0, 1, 1]
    with pytest.raises(DataFormatError, match="both"):
        gather_oof([f1, f1])
    with pytest.raises(DataFormatError, match="lack"):
        gather_oof([f1], expected_uids=["a", "b", "c"])
    out = tmp_path / "soft.npz"
    np.savez(out, uids=uids, probs=probs)
    assert np.allclose(load_soft_labels(out)["c"], [0.5, 0.5])
