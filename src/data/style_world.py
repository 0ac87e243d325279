"""A clothing-style stand-in: generated garment photos in 7 style classes with a skewed class balance.

Each style prefers some garment shapes, print patterns (the retail world's pattern renderer) and a colour
range; with probability `attr_noise` an attribute is drawn from any style instead, so classes overlap and
accuracy stays below 100% (like real style labels, which are partly a matter of taste). Photos reuse the
retail world's photometric pipeline: clutter background, perspective, lighting, blur, JPEG.

Layout under `<data_dir>/<tag>/`: images/{train,val,test}/*.jpg, lists/{train,val,test}.txt
(`path label uid`), classes.json, spec.json, DONE. Same spec, same bytes (one RNG per image).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from src.data.generate_once import GeneratedSource, generate_once, spec_tag
from src.data.retail_world import photometric as ph
from src.data.retail_world.catalogue import PATTERNS
from src.data.retail_world.render import _pattern

log = logging.getLogger(__name__)
STYLE_VERSION = 1
STYLES = ("casual", "streetwear", "sporty", "minimalist", "formal", "bohemian", "vintage")
# Skewed like real style data: the commonest class ~9x the rarest.
DEFAULT_PROPORTIONS = (0.30, 0.20, 0.15, 0.12, 0.10, 0.09, 0.04)
GARMENTS = {  # polygons in unit coordinates (x, y), y down
    "tshirt": [(.3, 0), (.7, 0), (1, .2), (.85, .35), (.78, .3), (.78, 1), (.22, 1), (.22, .3), (.15, .35), (0, .2)],
    "shirt": [(.32, 0), (.68, 0), (1, .15), (1, .75), (.85, .75), (.8, .3), (.8, 1), (.2, 1), (.2, .3), (.15, .75),
              (0, .75), (0, .15)],
    "dress": [(.35, 0), (.65, 0), (.7, .35), (1, 1), (0, 1), (.3, .35)],
    "coat": [(.3, 0), (.7, 0), (1, .12), (1, .85), (.85, .85), (.82, .3), (.85, 1), (.15, 1), (.18, .3), (.15, .85),
             (0, .85), (0, .12)],
    "trousers": [(.15, 0), (.85, 0), (1, 1), (.58, 1), (.5, .3), (.42, 1), (0, 1)],
    "skirt": [(.3, 0), (.7, 0), (1, 1), (0, 1)],
}
# style: (garment probabilities, pattern probabilities, (hue range, saturation range, value range)) in OpenCV HSV.
STYLE_RULES = {
    "casual": ({"tshirt": .5, "trousers": .3, "skirt": .2}, {"plain": .3, "stripes": .4, "checker": .3},
               ((0, 180), (60, 180), (120, 240))),
    "streetwear": ({"tshirt": .4, "coat": .3, "trousers": .3}, {"checker": .4, "diagonal": .3, "band": .3},
                   ((0, 180), (150, 255), (60, 200))),
    "sporty": ({"tshirt": .5, "trousers": .3, "shirt": .2}, {"band": .5, "diagonal": .3, "plain": .2},
               ((0, 180), (180, 255), (180, 255))),
    "minimalist": ({"tshirt": .3, "dress": .3, "coat": .2, "trousers": .2}, {"plain": .8, "band": .2},
                   ((0, 180), (0, 40), (150, 255))),
    "formal": ({"shirt": .5, "coat": .3, "trousers": .2}, {"plain": .7, "stripes": .3},
               ((90, 130), (20, 90), (20, 120))),
    "bohemian": ({"dress": .5, "skirt": .4, "shirt": .1}, {"waves": .5, "dots": .3, "diagonal": .2},
                 ((5, 30), (100, 200), (100, 200))),
    "vintage": ({"dress": .4, "shirt": .3, "skirt": .3}, {"dots": .5, "checker": .3, "plain": .2},
                ((10, 40), (40, 120), (120, 220))),
}
_KIND = {"train": 1, "val": 2, "test": 3}


@dataclass(frozen=True)
class StyleSpec:
    seed: int = 0
    num_train: int = 840
    num_val: int = 280
    num_test: int = 280
    image_size: int = 64
    attr_noise: float = 0.3
    proportions: tuple[float, ...] = DEFAULT_PROPORTIONS

    def __post_init__(self) -> None:
        if len(self.proportions) != len(STYLES) or abs(sum(self.proportions) - 1) > 1e-6:
            raise ValueError(f"proportions must be {len(STYLES)} numbers summing to 1, got {self.proportions}")
        if min(self.num_train, self.num_val, self.num_test) < len(STYLES):
            raise ValueError("each split needs at least one image per style")
        if not 0.0 <= self.attr_noise <= 1.0:
            raise ValueError(f"attr_noise must be in [0, 1], got {self.attr_noise}")

    @property
    def tag(self) -> str:
        return spec_tag("style-v", STYLE_VERSION, self)


def split_counts(n: int, proportions) -> list[int]:
    """Largest-remainder rounding with at least one image per class."""
    raw = np.asarray(proportions, dtype=np.float64) * n
    counts = np.maximum(np.floor(raw).astype(int), 1)
    for i in np.argsort(-(raw - np.floor(raw)))[: max(0, n - counts.sum())]:
        counts[i] += 1
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    return counts.tolist()


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    names = list(probs)
    return names[int(rng.choice(len(names), p=np.asarray([probs[k] for k in names]) / sum(probs.values())))]


def _colour(rng: np.random.Generator, hsv_ranges) -> tuple[int, int, int]:
    hsv = np.array([[[rng.integers(lo, hi + 1) if hi > lo else lo for lo, hi in hsv_ranges]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def render_garment(style: str, size: int, rng: np.random.Generator, attr_noise: float) -> np.ndarray:
    """One photo of a garment in `style` (RGB uint8, size x size)."""
    def rules():  # with prob attr_noise an attribute follows another (random) style's rules
        return STYLE_RULES[STYLES[int(rng.integers(len(STYLES)))] if rng.random() < attr_noise else style]

    garment = _choice(rng, rules()[0])
    pattern = _choice(rng, rules()[1])
    colours = rules()[2]
    base, accent = _colour(rng, colours), _colour(rng, colours)
    assert pattern in PATTERNS
    gw = int(size * rng.uniform(0.55, 0.8))
    gh = int(gw * rng.uniform(1.0, 1.4))
    rgb = np.empty((gh, gw, 3), np.uint8)
    rgb[:] = base
    _pattern(rgb, pattern, accent, int(rng.integers(0, 3)))
    mask = np.zeros((gh, gw), np.uint8)
    pts = (np.asarray(GARMENTS[garment]) * [gw - 1, gh - 1]).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255)
    sprite = ph.warp_rgba(np.dstack([rgb, mask]), rng, max_rotation=12.0, max_perspective=0.06)
    x0, y0, x1, y1 = ph.alpha_bbox(sprite)
    sprite = sprite[y0:y1, x0:x1]
    scale = min(1.0, 0.95 * size / max(sprite.shape[:2]))
    if scale < 1.0:
        sprite = cv2.resize(sprite, (max(1, int(sprite.shape[1] * scale)), max(1, int(sprite.shape[0] * scale))),
                            interpolation=cv2.INTER_AREA)
    img = ph.background(size, size, rng)
    sh, sw = sprite.shape[:2]
    ph.paste_rgba(img, sprite, int(rng.integers(0, size - sw + 1)), int(rng.integers(0, size - sh + 1)))
    img = ph.lighting(img, rng)
    img = ph.blur(img, rng)
    return ph.jpeg_roundtrip(img, int(rng.integers(60, 95)))


def generate_style_world(spec: StyleSpec, out: Path) -> None:
    for split, n in (("train", spec.num_train), ("val", spec.num_val), ("test", spec.num_test)):
        lines, idx = [], 0
        for label, count in enumerate(split_counts(n, spec.proportions)):
            for _ in range(count):
                rng = np.random.default_rng([spec.seed, _KIND[split], idx])
                img = render_garment(STYLES[label], spec.image_size, rng, spec.attr_noise)
                rel = f"images/{split}/{idx:06d}.jpg"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(ph.jpeg_bytes(img, 95))
                lines.append(f"{rel} {label} {split}_{idx:06d}")
                idx += 1
        (out / "lists").mkdir(parents=True, exist_ok=True)
        (out / "lists" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (out / "classes.json").write_text(json.dumps(list(STYLES), indent=1))
    (out / "spec.json").write_text(json.dumps(asdict(spec), indent=1, sort_keys=True))


def ensure_style_world(root: str | os.PathLike, spec: StyleSpec | None = None, **overrides) -> Path:
    """Generate under `root/<tag>` unless a complete copy exists (DONE); written in a temporary sibling and
    renamed into place, so an interrupted run never leaves a half-written dataset that looks complete."""
    spec = spec or StyleSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    return generate_once(root, spec.tag, lambda tmp: generate_style_world(spec, tmp), "style world")


class StyleWorld(GeneratedSource):
    """Source for ImageClassificationDataModule: the generated style data, created on first use."""

    spec_class = StyleSpec
    ensure = staticmethod(ensure_style_world)
