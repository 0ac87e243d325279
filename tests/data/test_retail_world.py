import hashlib
import json

import numpy as np
import pytest

from src.data.images import read_rgb
from src.data.retail_world import WorldSpec, ensure_world, make_catalogue
from src.data.retail_world.render import render_package

SMALL = dict(num_families=3, variants_per_family=2, num_train_skus=2, train_views=2, val_views=1,
             gallery_views=1, query_views=1, train_scenes=2, val_scenes=1)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = ensure_world(tmp_path / "a", WorldSpec(**SMALL))
    b = ensure_world(tmp_path / "b", WorldSpec(**SMALL))
    c = ensure_world(tmp_path / "c", WorldSpec(seed=1, **SMALL))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_cached_by_parameters(tmp_path):
    first = ensure_world(tmp_path, WorldSpec(**SMALL))
    mtime = (first / "DONE").stat().st_mtime_ns
    again = ensure_world(tmp_path, WorldSpec(**SMALL))
    assert again == first and (again / "DONE").stat().st_mtime_ns == mtime
    other = ensure_world(tmp_path, WorldSpec(**{**SMALL, "train_views": 3}))
    assert other != first


def test_look_alike_variants_differ_in_pixels_but_share_design():
    skus = make_catalogue(num_families=12, variants_per_family=2, seed=0)
    for fam in range(12):
        a, b = skus[2 * fam], skus[2 * fam + 1]
        assert (a.family_id, a.silhouette, a.pattern, a.base_rgb) == (b.family_id, b.silhouette, b.pattern, b.base_rgb)
        assert (a.accent_rgb != b.accent_rgb) or (a.label_text != b.label_text)
        ra, rb = render_package(a, 64), render_package(b, 64)
        diff = np.abs(ra.astype(int) - rb.astype(int)).sum(-1) > 30
        # Look-alikes: differ somewhere, but in a minority of the pixels (a hard case, not a new design).
        assert 0.005 < diff.mean() < 0.6, (fam, diff.mean())


def test_world_layout_and_open_set_split(tmp_path):
    root = ensure_world(tmp_path, WorldSpec(**SMALL))
    cat = json.loads((root / "catalogue.json").read_text())
    assert len(cat["skus"]) == 6 and cat["num_train_skus"] == 2
    labels = {split: {int(line.split()[1]) for line in (root / f"lists/{split}.txt").read_text().splitlines()}
              for split in ("train", "val", "query", "gallery", "catalogue")}
    assert labels["train"] == labels["val"] == {0, 1}
    assert labels["query"] == labels["gallery"] == {2, 3, 4, 5}  # never seen in training
    assert labels["catalogue"] == set(range(6))
    coco = json.loads((root / "annotations/scenes_train.json").read_text())
    assert len(coco["images"]) == 2 and coco["annotations"]
    for ann in coco["annotations"]:
        im = coco["images"][ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"] and w > 0 and h > 0
        img = read_rgb(str(root / im["file_name"]))
        assert img.shape[:2] == (im["height"], im["width"])


def _labels(root, name):
    return [int(line.split()[1]) for line in (root / f"lists/{name}.txt").read_text().splitlines()]


def test_counter_crops_keep_the_open_set_split(tmp_path):
    root = ensure_world(tmp_path, WorldSpec(**SMALL))
    assert set(_labels(root, "counter_train")) <= {0, 1} and _labels(root, "catalogue_train") == [0, 1]
    for half in ("val", "test"):
        crops = _labels(root, f"counter_query_{half}")
        # Never-seen SKUs only, and the same identities as that half's shopper queries.
        assert crops and set(crops) <= set(_labels(root, f"query_{half}"))
    assert not set(_labels(root, "counter_query_val")) & set(_labels(root, "counter_query_test"))
    scene_h, scene_w = WorldSpec(**SMALL).scene_size
    for line in (root / "lists/counter_train.txt").read_text().splitlines():
        crop = read_rgb(str(root / line.split()[0]))
        # A product crop (0.11-0.2 of the counter's width, loose box), not the whole counter.
        assert 0.05 * scene_w < crop.shape[1] < 0.6 * scene_w and crop.shape[0] < scene_h


def test_datamodule_concatenates_several_training_lists(tmp_path):
    from omegaconf import ListConfig

    from src.data.readers import DataFormatError
    from src.data.retrieval import RetrievalDataModule
    from src.data.sources import RetailWorld

    source = RetailWorld(str(tmp_path), **SMALL)
    lists = ListConfig(["lists/train.txt", "lists/counter_train.txt"])  # as Hydra passes a YAML list
    dm = RetrievalDataModule(source, train=lists, val_query="lists/query_val.txt", num_classes=2)
    dm.prepare_data()
    n = [len((source.root / p).read_text().splitlines()) for p in lists]
    assert len(dm.dataset("train")) == sum(n) and min(n) > 0
    bad = RetrievalDataModule(source, train=["lists/train.txt", "lists/query.txt"], val_query="lists/query_val.txt",
                              num_classes=2)
    with pytest.raises(DataFormatError, match=r"lists/query\.txt: label \d+ .*>= data\.num_classes=2"):
        bad.dataset("train")
