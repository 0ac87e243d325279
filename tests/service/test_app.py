"""The HTTP service with TestClient: every endpoint, bad uploads (4xx, service still up), concurrent adds."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from src.recognition.gallery import Gallery
from tests.recognition.helpers import CATALOGUE, counter_photo, pixel_embedder, studio_shot
from tests.service.conftest import ADMIN_KEYS, AUTH, FAMILY_HEADS, SHOP, png


def _photo_files(image):
    return {"image": ("photo.png", png(image), "image/png")}


def test_health_page_and_static(service):
    client, gallery = service
    r = client.get("/health")
    assert r.status_code == 200
    health = r.json()
    assert health.pop("worker_pid") == os.getpid()
    assert health.pop("gallery_version") == gallery.version and gallery.version.startswith("v-")
    assert health == {"status": "ok", "gallery_images": 6, "threshold": 0.95, "fingerprint": "pixels-16",
                      "detector": True, "changes_enabled": True}
    page = client.get("/")
    assert page.status_code == 200 and 'id="overlay"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_recognize_and_checkout(service):
    client, _ = service
    a, b, c = SHOP[0], SHOP[3], FAMILY_HEADS[7]  # c is not sold here
    img, boxes, _ = counter_photo([a, b, a, c], 1)
    r = client.post("/recognize", files=_photo_files(img))
    assert r.status_code == 200
    rec = r.json()
    assert sorted(i["sku"] for i in rec["items"]) == sorted([str(a.sku_id)] * 2 + [str(b.sku_id)])
    assert len(rec["unknown"]) == 1 and (rec["width"], rec["height"]) == (320, 240)
    r = client.post("/checkout", files=_photo_files(img))
    assert r.status_code == 200
    receipt = r.json()
    lines = {line["sku"]: line for line in receipt["items"]}
    assert lines[str(a.sku_id)]["count"] == 2 and lines[str(b.sku_id)]["count"] == 1
    assert receipt["total"] == (2 * round(a.price * 100) + round(b.price * 100)) / 100
    assert not receipt["complete"] and len(receipt["unknown"]) == 1 and len(receipt["detections"]) == 3
    np.testing.assert_allclose(receipt["unknown"][0]["box"], boxes[3], atol=2.5)


def test_gallery_list_add_remove(service):
    client, gallery = service
    listing = client.get("/gallery").json()
    assert listing["images"] == 6 and listing["products"] == 6
    assert {p["sku"] for p in listing["items"]} == {str(s.sku_id) for s in SHOP}
    assert len(client.get("/gallery", params={"limit": 2, "offset": 1}).json()["items"]) == 2

    new = FAMILY_HEADS[7]
    form = {"sku": "new-7", "name": "Brand new", "category": "snack", "price": "3.25"}
    r = client.post("/gallery", data=form, files=_photo_files(studio_shot(new)))
    assert r.status_code == 200 and r.json() == {"added": 1, "skipped": 0, "count": 7, "prices_changed": []}
    assert client.post("/gallery", data=form, files=_photo_files(studio_shot(new))).json()["skipped"] == 1
    assert len(list((gallery.directory / "uploads").iterdir())) == 1  # the photo is kept for rebuilds
    rec = client.post("/recognize", files=_photo_files(studio_shot(new))).json()
    assert [(i["sku"], i["name"], i["price"]) for i in rec["items"]] == [("new-7", "Brand new", 3.25)]
    # Saved on disk as it answered: a restart sees the product.
    assert len(Gallery.open(gallery.directory, pixel_embedder(16))) == 7

    r = client.delete("/gallery", params={"sku": "new-7"})
    assert r.status_code == 200 and r.json() == {"removed": 1, "count": 6}
    r = client.delete("/gallery", params={"sku": "new-7"})
    assert r.status_code == 404 and "new-7" in r.json()["detail"]
    assert client.post("/recognize", files=_photo_files(studio_shot(new))).json()["items"] == []


@pytest.mark.parametrize("form, field", [({"sku": "  "}, "sku"), ({"sku": "x", "price": "-1"}, "price"),
                                         ({"sku": "x", "price": "abc"}, "price"), ({"name": "no sku"}, "sku")])
def test_bad_product_forms_are_422(service, form, field):
    client, _ = service
    r = client.post("/gallery", data=form, files=_photo_files(studio_shot(SHOP[0])))
    assert r.status_code == 422 and field in str(r.json()["detail"])
    assert client.get("/health").json()["gallery_images"] == 6


def _big_png(side):
    return png(np.full((side, side, 3), 200, np.uint8))


@pytest.mark.parametrize("payload, status, message", [
    (b"this is not an image at all", 415, "not a readable image"),
    (b"", 400, "empty upload"),
    # Limit 0.5 MB: over it but within the multipart slack -> refused after reading 0.5 MB + 1 byte ...
    (np.random.default_rng(0).integers(0, 256, 560_000, dtype=np.uint8).tobytes(), 413, "'upload.bin' is 0.5 MB"),
    (bytes(3_000_000), 413, "upload too large: 2.9 MB"),  # ... far over it -> refused on Content-Length
    (_big_png(1200), 413, "1200x1200 pixels"),  # 1.44 MP > 1 MP: refused from the header, never decoded
    (png(np.zeros((40, 40, 3), np.uint8))[:60], 415, "not a readable image"),  # truncated PNG
])
@pytest.mark.parametrize("endpoint", ["/recognize", "/checkout"])
def test_bad_uploads_get_a_4xx_and_the_service_keeps_serving(service, payload, status, message, endpoint):
    client, _ = service
    r = client.post(endpoint, files={"image": ("upload.bin", payload, "application/octet-stream")})
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert client.get("/health").status_code == 200
    ok = client.post("/recognize", files=_photo_files(studio_shot(SHOP[1])))
    assert ok.status_code == 200 and ok.json()["items"][0]["sku"] == str(SHOP[1].sku_id)


def test_missing_file_and_bad_gallery_upload(service):
    client, _ = service
    assert client.post("/recognize").status_code == 422
    r = client.post("/gallery", data={"sku": "x"}, files=[("image", ("a.png", png(studio_shot(SHOP[0])), "image/png")),
                                                          ("image", ("b.txt", b"text", "text/plain"))])
    assert r.status_code == 415 and "b.txt" in r.json()["detail"]
    assert client.get("/health").json()["gallery_images"] == 6  # all or nothing: the good image was not added


def test_adding_products_while_recognising(service):
    """Threads recognise counter photos while others add products: every request 200, nothing lost."""
    client, gallery = service
    photo = png(counter_photo([SHOP[0], SHOP[2], SHOP[4]], 2)[0])
    expected = sorted(str(s.sku_id) for s in (SHOP[0], SHOP[2], SHOP[4]))
    new = [s for s in CATALOGUE if s.variant == 1]  # 8 products not in the gallery
    n_adders, per_adder, n_readers, per_reader = 3, 4, 3, 6
    barrier = threading.Barrier(n_adders + n_readers)
    statuses, bad_reads, errors = [], [], []
    lock = threading.Lock()

    def reader():
        barrier.wait()
        for _ in range(per_reader):
            r = client.post("/recognize", files={"image": ("c.png", photo, "image/png")})
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 200 and sorted(i["sku"] for i in r.json()["items"]) != expected:
                    bad_reads.append(r.json())

    def adder(k):
        barrier.wait()
        for j in range(per_adder):
            s = new[(k * per_adder + j) % len(new)]
            r = client.post("/gallery", data={"sku": f"new-{k}-{j}", "price": "1.5"},
                            files={"image": (f"{k}-{j}.png", png(studio_shot(s)), "image/png")})
            with lock:
                statuses.append(r.status_code)
                if r.status_code != 200 or r.json()["added"] != 1:
                    errors.append(r.text)

    threads = [threading.Thread(target=reader) for _ in range(n_readers)]
    threads += [threading.Thread(target=adder, args=(k,)) for k in range(n_adders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert statuses == [200] * (n_adders * per_adder + n_readers * per_reader) and not errors
    assert bad_reads == []  # new products never disturb the recognition of the shop's own products
    total = 6 + n_adders * per_adder
    assert client.get("/health").json()["gallery_images"] == total
    assert len(client.get("/gallery").json()["items"]) == total
    assert len(Gallery.open(gallery.directory, pixel_embedder(16))) == total  # every add reached the disk


def test_service_entry_point_builds_from_a_checkpoint(tmp_path, tiny_ckpt):
    from fastapi.testclient import TestClient

    from src.service.__main__ import build_app

    app = build_app(str(tmp_path / "fresh"), str(tiny_ckpt),  # a missing folder becomes an empty gallery
                    admin_keys=ADMIN_KEYS)
    with TestClient(app, headers=AUTH) as client:
        assert client.get("/health").json()["gallery_images"] == 0
        img = counter_photo(SHOP[:2], 0)[0]
        assert client.post("/checkout", files=_photo_files(img)).json()["items"] == []  # empty gallery: unknown
        r = client.post("/gallery", data={"sku": "a", "price": "1"}, files=_photo_files(studio_shot(SHOP[0])))
        assert r.json()["count"] == 1
        rec = client.post("/recognize", files=_photo_files(studio_shot(SHOP[0]))).json()
        assert rec["items"][0]["sku"] == "a"  # no threshold yet: the only product is the answer
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(SystemExit, match="holds no gallery"):
        build_app(str(tmp_path / "junk"), str(tiny_ckpt))
