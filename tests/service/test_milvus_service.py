"""The service over a Milvus gallery (Milvus Lite file here; a server URI in a shop): products added through
one app are priced by another app on the same collection, the audit trail and threshold are shared, and both
survive a restart."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from src.recognition.gallery import Gallery
from src.recognition.milvus_gallery import MilvusGallery, is_milvus_location, open_gallery
from src.recognition.pipeline import RecognitionPipeline
from src.service.app import create_app
from tests.recognition.helpers import BlobDetector, counter_photo, pixel_embedder, studio_shot
from tests.service.conftest import ADMIN_KEYS, AUTH, SHOP, png

pytest.importorskip("milvus_lite")


def _app(uri):
    embedder = pixel_embedder(16)
    gallery = MilvusGallery.connect(uri, embedder)
    return create_app(gallery, RecognitionPipeline(embedder, gallery.index, BlobDetector()),
                      admin_keys=ADMIN_KEYS), gallery


def _add(client, sku, price):
    files = [("image", ("a.png", png(studio_shot(sku)), "image/png"))]
    return client.post("/gallery", headers=AUTH, data={"sku": str(sku.sku_id), "price": price}, files=files)


def test_locations_pick_the_backend(tmp_path):
    assert is_milvus_location("milvus://db.shop:19530#store_17") and is_milvus_location(tmp_path / "g.db#x")
    assert not is_milvus_location(tmp_path / "gallery")
    folder = Gallery.create(pixel_embedder(16), tmp_path / "gallery")
    folder.save()
    assert type(open_gallery(tmp_path / "gallery", pixel_embedder(16))) is Gallery


def test_two_replicas_share_products_threshold_and_history(tmp_path):
    uri = str(tmp_path / "shop.db#store_1")
    app_a, gallery_a = _app(uri)
    app_b, gallery_b = _app(uri)
    photo, _, skus = counter_photo(SHOP[:2])
    with TestClient(app_a) as a, TestClient(app_b) as b:
        assert _add(a, SHOP[0], 1.25).status_code == 200
        assert _add(a, SHOP[1], 2.5).status_code == 200
        gallery_a.index.set_threshold(0.95)  # calibrated through replica A ...
        gallery_a.index.set_margin(0.01)
        receipt = b.post("/checkout", files={"image": ("c.png", png(photo), "image/png")}).json()
        assert (gallery_b.index.threshold, gallery_b.index.margin) == (0.95, 0.01)  # ... followed by B
        assert sorted(line["sku"] for line in receipt["items"]) == sorted(str(s) for s in skus)
        assert receipt["total"] == pytest.approx(3.75)
        assert b.request("DELETE", "/gallery", headers=AUTH, params={"sku": str(SHOP[1].sku_id)}).status_code == 200
        history = a.get("/gallery/history").json()
        assert [r["action"] for r in history["items"]] == ["remove", "add", "add"]  # newest first, both replicas
        assert history["items"][0]["key_id"] == "test-admin"
        assert b.get("/gallery/history", params={"sku": str(SHOP[0].sku_id)}).json()["total"] == 1
    gallery_a.close()
    gallery_b.close()
    _, reopened = _app(uri)  # a restart keeps products, threshold and trail
    assert [p["sku"] for p in reopened.products()] == [str(SHOP[0].sku_id)]
    assert (reopened.index.threshold, reopened.index.margin) == (0.95, 0.01) and reopened.history()["total"] == 3
    reopened.close()
