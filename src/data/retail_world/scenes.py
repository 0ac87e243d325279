"""Checkout-counter scenes: several products on a counter, with their boxes (COCO xywh) and SKU ids."""

from __future__ import annotations

import numpy as np

from src.data.retail_world import photometric as ph
from src.data.retail_world.catalogue import SKU
from src.data.retail_world.render import render_package
from src.utils.boxes import box_iou


def counter_scene(
    skus: list[SKU], size: tuple[int, int], rng: np.random.Generator, min_items: int = 2, max_items: int = 6
) -> tuple[np.ndarray, list[dict]]:
    """Returns (RGB image, objects) where each object has bbox [x, y, w, h], sku_id and category."""
    h, w = size
    img = ph.counter_surface(h, w, rng)
    objects: list[dict] = []
    boxes: list[tuple[int, int, int, int]] = []
    n = int(rng.integers(min_items, max_items + 1))
    for _ in range(n):
        sku = skus[int(rng.integers(len(skus)))]
        for _attempt in range(20):
            width = int(rng.uniform(0.11, 0.2) * w)
            sprite = ph.warp_rgba(render_package(sku, width), rng, max_rotation=25.0, max_perspective=0.06)
            sx0, sy0, sx1, sy1 = ph.alpha_bbox(sprite)
            sprite = sprite[sy0:sy1, sx0:sx1]
            sh, sw = sprite.shape[:2]
            if sh >= h - 4 or sw >= w - 4:
                continue
            x, y = int(rng.integers(2, w - sw - 2)), int(rng.integers(2, h - sh - 2))
            box = (x, y, x + sw, y + sh)
            if all(box_iou(box, b) < 0.15 for b in boxes):
                ph.paste_rgba(img, sprite, x, y)
                boxes.append(box)
                objects.append({"bbox": [x, y, sw, sh], "sku_id": sku.sku_id, "category": sku.category})
                break
    img = ph.lighting(img, rng)
    img = ph.blur(img, rng)
    return img, objects
