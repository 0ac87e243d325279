"""Product photos: clean catalogue (gallery) views and in-the-wild query views, cropped around the product."""

from __future__ import annotations

import numpy as np

from src.data.retail_world import photometric as ph
from src.data.retail_world.catalogue import SKU
from src.data.retail_world.render import render_package


def gallery_view(sku: SKU, width: int, rng: np.random.Generator) -> np.ndarray:
    """Studio shot: product upright on a light plain background, small margin. RGB uint8, natural aspect."""
    pkg = render_package(sku, int(width * rng.uniform(0.85, 0.95)))
    h, w = pkg.shape[:2]
    m = max(2, int(0.06 * w))
    canvas = np.full((h + 2 * m, w + 2 * m, 3), int(rng.integers(225, 256)), np.uint8)
    ph.paste_rgba(canvas, pkg, m, m)
    return canvas


def wild_view(sku: SKU, width: int, rng: np.random.Generator) -> np.ndarray:
    """Shopper/livestream photo cropped as a detector would: perspective, rotation, clutter, lighting, blur,
    occlusion and JPEG. RGB uint8 with the crop's own aspect ratio."""
    pkg = render_package(sku, int(width * rng.uniform(0.8, 1.1)))
    warped = ph.warp_rgba(pkg, rng, max_rotation=18.0, max_perspective=0.12)
    x0, y0, x1, y1 = ph.alpha_bbox(warped)
    bw, bh = x1 - x0, y1 - y0
    # Loose detector-style crop: random margins, sometimes cutting the product edge.
    mx0, mx1 = (rng.uniform(-0.05, 0.15, size=2) * bw).astype(int)
    my0, my1 = (rng.uniform(-0.05, 0.15, size=2) * bh).astype(int)
    cx0, cy0, cx1, cy1 = x0 - mx0, y0 - my0, x1 + mx1, y1 + my1
    bg = ph.background(cy1 - cy0, cx1 - cx0, rng)
    ph.paste_rgba(bg, warped, -cx0, -cy0)
    img = ph.occlude(bg, rng, max_fraction=0.2)
    img = ph.lighting(img, rng)
    img = ph.blur(img, rng)
    return ph.jpeg_roundtrip(img, int(rng.integers(35, 92)))
