"""A service over a small studio gallery: identity-like embedder + a blob detector for clean photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from src.recognition.gallery import Gallery
from src.recognition.pipeline import RecognitionPipeline
from src.service.app import create_app
from tests.recognition.helpers import CATALOGUE, BlobDetector, pixel_embedder, studio_entry

FAMILY_HEADS = [s for s in CATALOGUE if s.variant == 0]
SHOP = FAMILY_HEADS[:6]  # products sold; FAMILY_HEADS[6:] are not in the gallery


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make_service(directory, **kwargs):
    embedder = pixel_embedder(16)
    gallery = Gallery.create(embedder, directory, threshold=0.95)
    gallery.add([studio_entry(s) for s in SHOP])
    pipeline = RecognitionPipeline(embedder, gallery.index, BlobDetector())
    return create_app(gallery, pipeline, **kwargs), gallery


@pytest.fixture
def service(tmp_path):
    from fastapi.testclient import TestClient

    app, gallery = make_service(tmp_path / "gallery", max_upload_mb=0.5, max_pixels=1_000_000)
    with TestClient(app) as client:
        yield client, gallery


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from tests.recognition.helpers import write_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("tiny_ckpt_service")
    return write_tiny_checkpoint(tmp / "tiny.ckpt", tmp)
