"""scripts/gather_oof.py: fold prediction files under a multirun folder -> one soft-label .npz (+ .csv)."""


import numpy as np
import pytest

from src.data.readers import DataFormatError
from src.data.soft_labels import load_soft_labels
from tests.script_loader import load_script


def script():
    return load_script("gather_oof")


def write_fold(folder, uids, probs, labels):
    (folder / "predictions").mkdir(parents=True)
    np.savez(folder / "predictions" / "test_probs.npz", uids=np.array(uids), probs=np.array(probs, np.float32),
             labels=np.array(labels))


def test_gathers_all_folds_and_checks_coverage(tmp_path):
    multirun = tmp_path / "multirun"
    write_fold(multirun / "0", ["a", "b"], [[0.7, 0.3], [0.2, 0.8]], [0, 1])
    write_fold(multirun / "1", ["c"], [[0.6, 0.4]], [1])
    (tmp_path / "train.txt").write_text("a.jpg 0 a\nb.jpg 1 b\nc.jpg 1 c\n")
    out = script().main([str(multirun), "--out", str(tmp_path / "soft.npz"), "--train-list",
                         str(tmp_path / "train.txt")])
    soft = load_soft_labels(out)
    assert sorted(soft) == ["a", "b", "c"] and np.allclose(soft["c"], [0.6, 0.4])
    assert (tmp_path / "soft.csv").read_text().splitlines()[0] == "uid,label,p0,p1"
    (tmp_path / "train.txt").write_text("a.jpg 0 a\nb.jpg 1 b\nc.jpg 1 c\nd.jpg 0 d\n")
    with pytest.raises(DataFormatError, match="lack"):
        script().main([str(multirun), "--out", str(tmp_path / "x.npz"), "--train-list", str(tmp_path / "train.txt")])
    with pytest.raises(FileNotFoundError):
        script().main([str(tmp_path / "nothing"), "--out", str(tmp_path / "y.npz")])
