import json

import cv2
import numpy as np
import pytest

from src.data.datasets import ImageDataset, collate_skip_none
from src.data.images import ImageReadError
from src.data.readers import DataFormatError, load_coco, read_image_folder, read_image_list, read_samples


def _img(path, colour=(10, 200, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 6, 3), colour, np.uint8))


@pytest.fixture
def tree(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.png"):
        _img(tmp_path / "img" / name)
    return tmp_path


def test_image_list_two_and_three_columns(tree):
    (tree / "l2.txt").write_text("img/a.jpg 0\n# comment\n\nimg/b.jpg 3\n")
    (tree / "l3.txt").write_text("img/a.jpg 0 id_a\nimg/b.jpg 1 id_b\n")
    s2 = read_image_list(tree / "l2.txt")
    assert [(s.label, s.uid) for s in s2] == [(0, "img/a.jpg"), (3, "img/b.jpg")]
    s3 = read_image_list(tree / "l3.txt", root=tree)
    assert s3[1].uid == "id_b" and s3[1].path == str(tree / "img/b.jpg")


@pytest.mark.parametrize(
    "content, message",
    [
        ("img/a.jpg 0\nimg/missing.jpg 1\n", r"l\.txt:2: image file not found"),
        ("img/a.jpg zero\n", r"l\.txt:1: label must be an integer, got 'zero'"),
        ("img/a.jpg 0\nimg/b.jpg 1 x y\n", r"l\.txt:2: expected 'path label \[unique_id\]'"),
        ("# only a comment\n", r"l\.txt: image list is empty"),
        ("img/a.jpg 0 same\nimg/b.jpg 1 same\n", r"l\.txt:2: duplicate unique id 'same'"),
        ("img/a.jpg -1\n", r"l\.txt:1: label must be >= 0"),
    ],
)
def test_image_list_errors_name_file_and_line(tree, content, message):
    (tree / "l.txt").write_text(content)
    with pytest.raises(DataFormatError, match=message):
        read_image_list(tree / "l.txt")


def test_missing_list_and_unknown_format(tree):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_image_list(tree / "nope.txt")
    with pytest.raises(DataFormatError, match="unknown data format 'csv'"):
        read_samples("csv", tree / "l.txt")


def test_image_folder(tmp_path):
    _img(tmp_path / "shirt" / "1.jpg")
    _img(tmp_path / "dress" / "2.png")
    _img(tmp_path / "dress" / "sub" / "3.jpg")
    samples, classes = read_image_folder(tmp_path)
    assert classes == ["dress", "shirt"]
    assert sorted((s.uid, s.label) for s in samples) == [("dress/2.png", 0), ("dress/sub/3.jpg", 0), ("shirt/1.jpg", 1)]
    with pytest.raises(DataFormatError, match="no images"):
        (tmp_path / "empty" / "x").mkdir(parents=True)
        read_image_folder(tmp_path / "empty")


def test_corrupt_image_skipped_and_counted(tree, caplog):
    (tree / "img/bad.jpg").write_bytes(b"not a jpeg at all")
    (tree / "img/empty.jpg").write_bytes(b"")
    (tree / "l.txt").write_text("img/a.jpg 0\nimg/bad.jpg 1\nimg/b.jpg 2\nimg/empty.jpg 3\n")
    ds = ImageDataset(read_image_list(tree / "l.txt"))
    with caplog.at_level("WARNING"):
        items = [ds[i] for i in range(len(ds))]
    assert items[1] is None and items[3] is None and ds.skipped.count == 2
    assert "bad.jpg" in caplog.text and "2 skipped so far" in caplog.text
    batch = collate_skip_none(items)
    assert batch["label"].tolist() == [0, 2] and batch["index"].tolist() == [0, 2]
    assert collate_skip_none([None, None]) is None
    strict = ImageDataset(read_image_list(tree / "l.txt"), on_error="raise")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        strict[1]


def _coco(tmp_path, **changes):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "product"}],
    }
    for k, v in changes.items():
        data["annotations"][0][k] = v
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bbox": [90, 10, 20, 30]}, "annotation 7 box .* lies outside image 1"),
        ({"bbox": [10, 10, -5, 30]}, "annotation 7 has non-positive box size"),
        ({"image_id": 99}, "annotation 7 refers to unknown image_id 99"),
        ({"category_id": 5}, "annotation 7 has unknown category_id 5"),
    ],
)
def test_coco_bad_annotations(tmp_path, changes, message):
    with pytest.raises(DataFormatError, match=message):
        load_coco(_coco(tmp_path, **changes))


def test_coco_empty_and_invalid_files(tmp_path):
    assert load_coco(_coco(tmp_path))["annotations"][0]["id"] == 7
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DataFormatError, match="empty.json: COCO annotation file is empty"):
        load_coco(tmp_path / "empty.json")
    (tmp_path / "broken.json").write_text('{"images": [\n  1,,\n]}')
    with pytest.raises(DataFormatError, match=r"broken.json:2: not valid JSON"):
        load_coco(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"foo": 1}')
    with pytest.raises(DataFormatError, match="missing list 'images'"):
        load_coco(tmp_path / "other.json")
