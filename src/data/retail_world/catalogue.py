"""Procedural SKUs: product families with look-alike variants (same design, other accent colour or text)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CATEGORIES = ("beverage", "snack", "dairy", "cereal", "cleaning", "cosmetics", "canned", "confectionery")
SILHOUETTES = ("box", "bottle", "can", "bag", "jar", "tube")
PATTERNS = ("plain", "stripes", "dots", "checker", "waves", "diagonal", "band")
_SYLLABLES = ("ko", "ra", "mi", "zu", "te", "lo", "va", "ni", "so", "pe", "qu", "xi", "da", "fu", "ge", "ha")


@dataclass(frozen=True)
class SKU:
    sku_id: int
    family_id: int
    variant: int
    name: str
    category: str
    price: float
    silhouette: str
    pattern: str
    base_rgb: tuple[int, int, int]
    accent_rgb: tuple[int, int, int]
    text_rgb: tuple[int, int, int]
    label_text: str
    aspect: float  # height / width of the package

    def to_dict(self) -> dict:
        return asdict(self)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(90, 256)]]], dtype=np.uint8)
    import cv2

    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(int(c) for c in rgb)


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(_SYLLABLES, size=n)).upper()


def make_catalogue(num_families: int, variants_per_family: int, seed: int) -> list[SKU]:
    """Families share silhouette, pattern, base colour and brand; variants change the accent colour or the
    printed flavour text, so look-alikes differ only in small regions (the hard case in real product sets).
    Families are interleaved so any prefix of SKU ids holds whole families in training and whole families
    out of it (open-set evaluation never sees a sibling's design in training)."""
    rng = np.random.default_rng(seed)
    skus: list[SKU] = []
    for fam in range(num_families):
        silhouette = SILHOUETTES[rng.integers(len(SILHOUETTES))]
        pattern = PATTERNS[rng.integers(len(PATTERNS))]
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        base = _colour(rng)
        brand = _word(rng, 2)
        aspect = {"box": 1.3, "bottle": 2.2, "can": 1.6, "bag": 1.2, "jar": 1.1, "tube": 2.6}[silhouette]
        aspect = float(np.round(aspect * rng.uniform(0.85, 1.15), 3))
        base_price = float(rng.uniform(0.5, 12.0))
        accent = _colour(rng)
        text = (255, 255, 255) if sum(base) < 380 else (20, 20, 20)
        flavour = _word(rng, 1)
        for v in range(variants_per_family):
            if v > 0:
                # Look-alike: either a new accent colour or a new flavour word, never both.
                # Redraw until it really differs: two SKUs must never be pixel-identical.
                if rng.random() < 0.5:
                    prev = accent
                    while sum(abs(a - b) for a, b in zip(accent, prev)) < 60:
                        accent = _colour(rng)
                else:
                    prev_word = flavour
                    while flavour == prev_word:
                        flavour = _word(rng, 1)
            skus.append(
                SKU(
                    sku_id=len(skus),
                    family_id=fam,
                    variant=v,
                    name=f"{brand} {flavour} {silhouette}".title() + (f" v{v + 1}" if v else ""),
                    category=category,
                    price=round(base_price * (1 + 0.1 * v), 2),
                    silhouette=silhouette,
                    pattern=pattern,
                    base_rgb=base,
                    accent_rgb=accent,
                    text_rgb=text,
                    label_text=f"{brand}{flavour}",
                    aspect=aspect,
                )
            )
    return skus
