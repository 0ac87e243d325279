"""Checkout-counter scenes: several products on a counter, with their boxes (COCO xywh) and SKU ids."""

from __future__ import annotations

import numpy as np

from src.data.retail_world import photometric as ph
from src.data.retail_world.catalogue import SKU
from src.data.retail_world.render import render_package


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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
            if all(_iou(box, b) < 0.15 for b in boxes):
                ph.paste_rgba(img, sprite, x, y)
                boxes.append(box)
                objects.append({"bbox": [x, y, sw, sh], "sku_id": sku.sku_id, "category": sku.category})
                break
    img = ph.lighting(img, rng)
    img = ph.blur(img, rng)
    return img, objects
