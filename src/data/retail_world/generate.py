"""Write the retail world to disk in the formats real datasets come in, once per parameter set.

Layout under `<root>/<tag>/` (tag = version + hash of the spec, so other parameters never reuse stale files):
  images/{train,val,gallery,query,catalogue}/*.jpg   product crops with their natural aspect ratio
  images/scenes/{train,val}/*.jpg                     checkout-counter scenes (all SKUs)
  images/scenes/counter_{train,val,test}/*.jpg        counters of the training SKUs / of one unseen half only
  images/counter_{train,val,test}/*.jpg               their products, cut out at jittered (detector-like) boxes
  lists/{train,val,gallery,query,catalogue}.txt       `relative/path label unique_id` (PaddleClas / AliProducts)
  lists/{query,gallery}_{val,test}.txt                unseen identities split by family: selection vs report
  lists/category_{train,val}.txt                      same images, product-category labels
  lists/catalogue_train.txt                           the catalogue rows of the training SKUs
  lists/counter_train.txt, counter_query_{val,test}.txt  counter crops: training SKUs / unseen, split as above
  annotations/scenes_{train,val,counter_*}.json       COCO detection JSON (+ sku_id per annotation)
  catalogue.json                                      SKU metadata (name, category, price, ...)
  spec.json, DONE                                     the parameters; DONE is written last
SKU ids [0, num_train_skus) are training identities; the rest are never seen in training (open-set gallery
and queries). Same spec, same bytes: every image draws from its own RNG seeded by (seed, kind, index).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from src.data.generate_once import generate_once, spec_tag
from src.data.retail_world import photometric as ph
from src.data.retail_world.catalogue import CATEGORIES, make_catalogue
from src.data.retail_world.scenes import counter_scene
from src.data.retail_world.views import gallery_view, wild_view

log = logging.getLogger(__name__)
GENERATOR_VERSION = 4
_KIND = {"train": 1, "val": 2, "gallery": 3, "query": 4, "catalogue": 5, "scene_train": 6, "scene_val": 7,
         "counter_train": 8, "counter_val": 9, "counter_test": 10}


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    num_families: int = 40
    variants_per_family: int = 2
    num_train_skus: int = 56
    view_width: int = 64
    train_views: int = 10
    val_views: int = 3
    gallery_views: int = 2
    query_views: int = 5
    # (h, w). 480x640 (was 240x320): at 320 px wide a product's six-letter label got ~6 px a letter under the
    # photo's blur, and look-alikes that differ only in two letters were told apart at chance by any model
    # (measured: 0.47 text vs 0.94 colour look-alikes). A checkout camera resolves its labels.
    scene_size: tuple[int, int] = (480, 640)
    train_scenes: int = 60
    val_scenes: int = 20
    # Counters made of one split's SKUs only, cut into crops at their boxes (copy-paste synthesis as in RPC
    # checkout solutions): what the checkout pipeline embeds, for training (training SKUs) and selection.
    # None: scaled with the scenes (5 x train_scenes; 1.5 x val_scenes per unseen half), so small test worlds
    # stay small.
    counter_train_scenes: int | None = None
    counter_query_scenes: int | None = None

    def __post_init__(self) -> None:
        if self.counter_train_scenes is None:
            object.__setattr__(self, "counter_train_scenes", 5 * self.train_scenes)
        if self.counter_query_scenes is None:
            object.__setattr__(self, "counter_query_scenes", max(1, round(1.5 * self.val_scenes)))
        n = self.num_families * self.variants_per_family
        if not 0 < self.num_train_skus < n:
            raise ValueError(f"num_train_skus must be in (0, {n}), got {self.num_train_skus}")
        if self.num_train_skus % self.variants_per_family:
            raise ValueError("num_train_skus must be a multiple of variants_per_family (whole families per split)")

    @property
    def tag(self) -> str:
        return spec_tag("v", GENERATOR_VERSION, self)


def _rng(spec: WorldSpec, kind: str, idx: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _KIND[kind], idx])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_views(out: Path, spec: WorldSpec, skus, split: str, n_views: int, clean: bool, label_of) -> list[str]:
    lines = []
    for sku in skus:
        for k in range(n_views):
            rng = _rng(spec, split, sku.sku_id * 1000 + k)
            img = gallery_view(sku, spec.view_width, rng) if clean else wild_view(sku, spec.view_width, rng)
            rel = f"images/{split}/{sku.sku_id:04d}_{k:02d}.jpg"
            _write(out / rel, ph.jpeg_bytes(img, 95 if clean else 90))
            lines.append(f"{rel} {label_of(sku)} {split}_{sku.sku_id:04d}_{k:02d}")
    return lines


def _jittered_crop(img: np.ndarray, bbox, rng: np.random.Generator) -> np.ndarray:
    """The box with each side moved by -5 %..+10 % of its size, as a detector's boxes are: loose, sometimes tight."""
    x, y, w, h = bbox
    dx0, dx1 = rng.uniform(-0.05, 0.1, size=2) * w
    dy0, dy1 = rng.uniform(-0.05, 0.1, size=2) * h
    H, W = img.shape[:2]
    x0, y0 = max(0, int(round(x - dx0))), max(0, int(round(y - dy0)))
    x1, y1 = min(W, int(round(x + w + dx1))), min(H, int(round(y + h + dy1)))
    return np.ascontiguousarray(img[y0:y1, x0:x1])


def _write_scenes(out: Path, spec: WorldSpec, skus, kind: str, n: int, crops: bool = False) -> tuple[dict, list[str]]:
    """``n`` counter photos of ``skus`` under images/scenes/<kind>/ -> (COCO dict with ``sku_id`` per
    annotation, image-list lines of their products' crops under images/<kind>/ when ``crops``)."""
    images, annotations, lines = [], [], []
    cat_id = {c: i + 1 for i, c in enumerate(CATEGORIES)}
    h, w = spec.scene_size
    for i in range(n):
        rng = _rng(spec, kind, i)
        img, objects = counter_scene(skus, (h, w), rng)
        data = ph.jpeg_bytes(img, 92)
        rel = f"images/scenes/{kind.removeprefix('scene_')}/{i:05d}.jpg"
        _write(out / rel, data)
        images.append({"id": i + 1, "file_name": rel, "height": h, "width": w})
        decoded = ph.jpeg_decode(data) if crops else None  # crop what the photo holds, JPEG included
        for k, obj in enumerate(objects):
            x, y, bw, bh = obj["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat_id[obj["category"]],
                    "bbox": [float(x), float(y), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                    "sku_id": obj["sku_id"],
                }
            )
            if crops:
                crop_rel = f"images/{kind}/{i:05d}_{k}.jpg"
                _write(out / crop_rel, ph.jpeg_bytes(_jittered_crop(decoded, obj["bbox"], rng), 95))
                lines.append(f"{crop_rel} {obj['sku_id']} {kind}_{i:05d}_{k}")
    categories = [{"id": i, "name": c, "supercategory": "product"} for c, i in cat_id.items()]
    return {"images": images, "annotations": annotations, "categories": categories}, lines


def generate_world(spec: WorldSpec, out: Path) -> None:
    skus = make_catalogue(spec.num_families, spec.variants_per_family, spec.seed)
    train_skus, unseen = skus[: spec.num_train_skus], skus[spec.num_train_skus :]
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    lists = {
        "train": _write_views(out, spec, train_skus, "train", spec.train_views, False, lambda s: s.sku_id),
        "val": _write_views(out, spec, train_skus, "val", spec.val_views, False, lambda s: s.sku_id),
        "gallery": _write_views(out, spec, unseen, "gallery", spec.gallery_views, True, lambda s: s.sku_id),
        "query": _write_views(out, spec, unseen, "query", spec.query_views, False, lambda s: s.sku_id),
        "catalogue": _write_views(out, spec, skus, "catalogue", 1, True, lambda s: s.sku_id),
    }
    # Open-set protocol: unseen identities split by whole families into a validation half (model selection)
    # and a test half (the reported numbers), so checkpoints are never chosen on the test identities.
    n_val = (len(unseen) // spec.variants_per_family // 2) * spec.variants_per_family
    val_ids = {s.sku_id for s in unseen[:n_val]}
    for kind in ("query", "gallery"):
        lists[f"{kind}_val"] = [ln for ln in lists[kind] if int(ln.split()[1]) in val_ids]
        lists[f"{kind}_test"] = [ln for ln in lists[kind] if int(ln.split()[1]) not in val_ids]
    lists["catalogue_train"] = [ln for ln in lists["catalogue"] if int(ln.split()[1]) < spec.num_train_skus]
    coco: dict[str, dict] = {}
    coco["counter_train"], lists["counter_train"] = _write_scenes(out, spec, train_skus, "counter_train",
                                                                  spec.counter_train_scenes, crops=True)
    for half, members in (("val", [s for s in unseen if s.sku_id in val_ids]),
                          ("test", [s for s in unseen if s.sku_id not in val_ids])):
        coco[f"counter_{half}"], lists[f"counter_query_{half}"] = _write_scenes(
            out, spec, members, f"counter_{half}", spec.counter_query_scenes, crops=True)
    by_id = {s.sku_id: s for s in skus}
    for split in ("train", "val"):
        lists[f"category_{split}"] = [
            " ".join([p, str(cat_index[by_id[int(lbl)].category]), uid])
            for p, lbl, uid in (line.split() for line in lists[split])
        ]
    for name, lines in lists.items():
        _write(out / "lists" / f"{name}.txt", ("\n".join(lines) + "\n").encode())
    for split, n in (("train", spec.train_scenes), ("val", spec.val_scenes)):
        coco[split] = _write_scenes(out, spec, skus, f"scene_{split}", n)[0]
    for split, data in coco.items():
        _write(out / "annotations" / f"scenes_{split}.json", json.dumps(data, indent=1).encode())
    meta = {"categories": list(CATEGORIES), "num_train_skus": spec.num_train_skus, "skus": [s.to_dict() for s in skus]}
    _write(out / "catalogue.json", json.dumps(meta, indent=1).encode())
    _write(out / "spec.json", json.dumps(asdict(spec), indent=1, sort_keys=True).encode())


def ensure_world(root: str | os.PathLike, spec: WorldSpec | None = None, **overrides) -> Path:
    """Generate the world under `root` unless a complete copy for this spec exists; return its directory.
    Generation happens in a temporary sibling directory that is renamed into place, so an interrupted run
    never leaves a half-written dataset that looks complete."""
    spec = spec or WorldSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    return generate_once(root, spec.tag, lambda tmp: generate_world(spec, tmp), "retail world")
