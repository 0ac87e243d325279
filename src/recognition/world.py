"""The retail world seen by the recognition scripts: counter scenes with their true baskets, catalogue images
as gallery entries, ground-truth crops for threshold calibration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from src.data.images import read_rgb
from src.data.readers import load_coco
from src.recognition.gallery import ProductImage, entries_from_image_list, read_catalogue

__all__ = ["Scene", "catalogue_entries", "counter_scenes", "scene_crop_entries"]


@dataclass(frozen=True)
class Scene:
    image_path: str
    boxes: np.ndarray  # float32 [n, 4] xyxy
    skus: tuple[str, ...]  # one per box: the true basket

    def image(self) -> np.ndarray:
        return read_rgb(self.image_path)


def counter_scenes(root: str | os.PathLike, split: str = "val") -> list[Scene]:
    """Scenes of ``annotations/scenes_<split>.json`` (COCO + ``sku_id`` per annotation)."""
    root = Path(root)
    coco = load_coco(root / "annotations" / f"scenes_{split}.json")
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        if "sku_id" not in a:
            raise KeyError(f"{root}/annotations/scenes_{split}.json: annotation {a.get('id')} has no sku_id")
        by_image[a["image_id"]].append(a)
    scenes = []
    for im in coco["images"]:
        anns = by_image[im["id"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        scenes.append(Scene(str(root / im["file_name"]), boxes, tuple(str(a["sku_id"]) for a in anns)))
    return scenes


def catalogue_entries(root: str | os.PathLike, exclude: Iterable[str] = ()) -> list[ProductImage]:
    """One studio image per SKU (lists/catalogue.txt) with catalogue.json's name/category/price."""
    root = Path(root)
    skip = {str(s) for s in exclude}
    entries = entries_from_image_list(root / "lists" / "catalogue.txt", read_catalogue(root / "catalogue.json"), root)
    return [e for e in entries if e.sku not in skip]


def scene_crop_entries(scenes: Sequence[Scene], min_size: int = 4) -> list[ProductImage]:
    """Every ground-truth box of the scenes as a cropped image labelled with its SKU (calibration queries)."""
    out = []
    for scene in scenes:
        img = scene.image()
        for k, (box, sku) in enumerate(zip(scene.boxes, scene.skus)):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            if x1 - x0 >= min_size and y1 - y0 >= min_size:
                out.append(ProductImage(sku, f"{scene.image_path}#{k}", image=np.ascontiguousarray(img[y0:y1, x0:x1])))
    return out
