"""Fixtures for the recognition tests: identity-like embedder, a studio gallery, a tiny checkpoint."""

from __future__ import annotations

import pytest

from src.recognition.gallery import Gallery
from tests.recognition.helpers import CATALOGUE, pixel_embedder, studio_entry, write_tiny_checkpoint

FAMILY_HEADS = [s for s in CATALOGUE if s.variant == 0]  # one product per family: no look-alikes


@pytest.fixture
def embedder():
    return pixel_embedder(16)


@pytest.fixture
def studio_gallery(embedder):
    """The 8 family heads' studio shots; threshold 0.95 (genuine >= 0.999, other families <= 0.89 here)."""
    gallery = Gallery.create(embedder, threshold=0.95)
    gallery.add([studio_entry(s) for s in FAMILY_HEADS])
    return gallery


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_ckpt")
    return write_tiny_checkpoint(tmp / "tiny.ckpt", tmp)
