"""The embedded retail world: a deterministic generator of a small product catalogue, its photos and counter scenes."""

from src.data.retail_world.catalogue import SKU, make_catalogue
from src.data.retail_world.generate import WorldSpec, ensure_world

__all__ = ["SKU", "make_catalogue", "WorldSpec", "ensure_world"]
