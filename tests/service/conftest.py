"""A service over a small studio gallery: identity-like embedder + a blob detector for clean photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.recognition.gallery import Gallery
from src.recognition.pipeline import RecognitionPipeline
from src.service.app import create_app
from src.service.auth import AdminKeys
from tests.recognition.helpers import CATALOGUE, BlobDetector, pixel_embedder, studio_entry

FAMILY_HEADS = [s for s in CATALOGUE if s.variant == 0]
SHOP = FAMILY_HEADS[:6]  # products sold; FAMILY_HEADS[6:] are not in the gallery
ADMIN_KEY = "test-admin-key-0123456789"
ADMIN_KEYS = AdminKeys.of({"test-admin": ADMIN_KEY, "second": "another-key-abcdefghij"})
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make_service(directory, *, admin_keys=ADMIN_KEYS, **kwargs):
    """The app over the 6-product studio gallery in ``directory`` (created there, or opened if it exists)."""
    embedder = pixel_embedder(16)
    if directory is not None and (Path(directory) / "CURRENT").is_file():
        gallery = Gallery.open(directory, embedder)
    else:
        gallery = Gallery.create(embedder, directory, threshold=0.95)
        gallery.add([studio_entry(s) for s in SHOP])
    pipeline = RecognitionPipeline(embedder, gallery.index, BlobDetector())
    return create_app(gallery, pipeline, admin_keys=admin_keys, **kwargs), gallery


@pytest.fixture
def service(tmp_path):
    """A client that sends the admin key (as a till's admin would), and the gallery."""
    from fastapi.testclient import TestClient

    app, gallery = make_service(tmp_path / "gallery", max_upload_mb=0.5, max_pixels=1_000_000)
    with TestClient(app, headers=AUTH) as client:
        yield client, gallery


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from tests.recognition.helpers import write_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("tiny_ckpt_service")
    return write_tiny_checkpoint(tmp / "tiny.ckpt", tmp)
