"""IDX reader: known answers on written files, clear errors on bad ones; the real files when installed."""

import gzip
import os
import struct

import numpy as np
import pytest

from src.data.fashion_mnist import DEFAULT_RAW_DIR, FashionMNIST, load_split, missing_files, read_idx
from src.data.readers import DataFormatError, read_image_list


def write_idx(path, arr, code=0x08):
    data = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_read_idx_plain_and_gzip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr)
    write_idx(tmp_path / "b-idx3-ubyte.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    assert np.array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz"), arr)
    ints = np.array([1, -2, 300], dtype=">i4")
    write_idx(tmp_path / "c", ints, code=0x0C)
    assert read_idx(tmp_path / "c").tolist() == [1, -2, 300]


def test_read_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(DataFormatError, match="bad: not an IDX file"):
        read_idx(bad)
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataFormatError, match="short: shape"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")


def _fake_install(tmp_path, num_train: int, num_test: int):
    """A Debian-like install of random images, labels cycling 0..9, as gzipped IDX files under tmp_path/raw."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", num_train), ("t10k", num_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return raw


def test_converter_on_a_tiny_fake_install(tmp_path):
    raw = _fake_install(tmp_path, num_train=40, num_test=10)
    assert missing_files(raw) == [] and len(missing_files(tmp_path)) == 4  # .gz and plain both count
    src = FashionMNIST(str(tmp_path / "out"), raw_dir=str(raw), num_val=10, train_per_class=2)
    src.prepare()
    train = read_image_list(src.root / "lists" / "train.txt", src.root)
    assert len(train) == 20 and sorted({s.label for s in train}) == list(range(10))
    assert len(read_image_list(src.root / "lists" / "val.txt", src.root)) == 10
    assert len(read_image_list(src.root / "lists" / "test.txt", src.root)) == 10


@pytest.mark.fashion_mnist
def test_real_files_have_the_documented_shapes():
    missing = missing_files(DEFAULT_RAW_DIR)
    if missing:  # `make test-fashion-mnist` (CI) sets REQUIRE_FASHION_MNIST=1: there missing data is a failure
        (pytest.fail if os.environ.get("REQUIRE_FASHION_MNIST") == "1" else pytest.skip)(
            f"{DEFAULT_RAW_DIR}: missing {missing}; run `make install-fashion-mnist`")
    x, y = load_split(DEFAULT_RAW_DIR, "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


def test_open_set_lists_never_search_a_training_class(tmp_path):
    raw = _fake_install(tmp_path, num_train=400, num_test=200)
    src = FashionMNIST(str(tmp_path / "out"), raw_dir=str(raw), num_val=200)
    src.prepare()
    lists = src.root / "lists"
    for prefix, train_classes in (("open", {0, 1, 2, 5, 7}), ("open_disjoint", {0, 1, 2, 3, 4})):
        train = read_image_list(lists / f"{prefix}_train.txt", src.root)
        assert {s.label for s in train} == train_classes and len(train) == 5 * 20  # all 20 of each (< 400)
        for split in ("val", "test"):
            query = read_image_list(lists / f"{prefix}_{split}_query.txt", src.root)
            gallery = read_image_list(lists / f"{prefix}_{split}_gallery.txt", src.root)
            assert {s.label for s in query} == {s.label for s in gallery} == set(range(10)) - train_classes
            assert not {s.path for s in query} & {s.path for s in gallery}
            assert all(os.path.exists(s.path) for s in query + gallery)
