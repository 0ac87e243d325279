"""The retail-world adapters used by the checkout evaluation and the demo."""

from __future__ import annotations

import json

from src.data.sources import RetailWorld
from src.recognition.world import catalogue_entries, counter_scenes, scene_crop_entries
from tests.conftest import TINY_WORLD


def test_scenes_catalogue_and_crops(data_dir):
    source = RetailWorld(str(data_dir / "retail_world"), **TINY_WORLD)
    source.prepare()
    root = source.root
    coco = json.loads((root / "annotations" / "scenes_val.json").read_text())
    scenes = counter_scenes(root, "val")
    assert len(scenes) == TINY_WORLD["val_scenes"] == len(coco["images"])
    assert sum(len(s.skus) for s in scenes) == len(coco["annotations"])
    a = coco["annotations"][0]
    first = next(s for s in scenes if s.image_path.endswith(coco["images"][a["image_id"] - 1]["file_name"]))
    x, y, w, h = a["bbox"]
    assert first.boxes[0].tolist() == [x, y, x + w, y + h] and first.skus[0] == str(a["sku_id"])
    entries = catalogue_entries(root, exclude=["3"])
    n_skus = TINY_WORLD["num_families"] * TINY_WORLD["variants_per_family"]
    assert len(entries) == n_skus - 1 and "3" not in {e.sku for e in entries}
    assert entries[0].name and entries[0].price is not None
    crops = scene_crop_entries(scenes[:2])
    assert len(crops) == len(scenes[0].skus) + len(scenes[1].skus)
    x0, y0, x1, y1 = (round(v) for v in scenes[0].boxes[0])
    assert crops[0].image.shape == (y1 - y0, x1 - x0, 3) and crops[0].sku == scenes[0].skus[0]
