"""Faults: `kill -9` of the service process during an add leaves the old or the new gallery, never a broken one
(a real subprocess, killed at each stage of the atomic save, and at random moments in the slow suite); bad
requests (tokens, uploads, SKUs) get one clear 4xx each and change nothing, on disk included."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from src.recognition.gallery import Gallery
from tests.recognition.helpers import CATALOGUE, pixel_embedder, studio_shot
from tests.service.conftest import ADMIN_KEY, AUTH, FAMILY_HEADS, SHOP, make_service, png
from tests.service.live_server import send, start_server
from tests.service.serve_fixture import PAUSE_STAGES

NEW = [s for s in CATALOGUE if s.variant == 1]  # 8 products not in the shop's gallery


def snapshot(directory: Path) -> dict:
    """What a restart would serve: the gallery must load; its version, products and audit trail."""
    gallery = Gallery.open(directory, pixel_embedder(16))
    return {"version": gallery.version, "products": {p["sku"]: p["price"] for p in gallery.products()},
            "images": len(gallery), "audit": gallery.history(limit=1)["total"]}


def assert_old_or_new(after: dict, before: dict, added: list[tuple[str, float]]) -> int:
    """``after`` is ``before`` plus the first j of ``added`` (each add its own commit) for some j; returns j."""
    for j in range(len(added) + 1):
        expected = {**before["products"], **dict(added[:j])}
        if after["products"] == expected:
            assert after["images"] == before["images"] + j and after["audit"] == before["audit"] + j, (after, j)
            assert (after["version"] == before["version"]) == (j == 0)
            return j
    raise AssertionError(f"torn gallery after kill -9: {after} is not {before} plus a prefix of {added}")


def _add_in_background(url: str, sku: str, product) -> threading.Thread:
    def run():
        try:
            send("POST", url + "/gallery", fields={"sku": sku, "price": "1.25"},
                 files=[("image", "p.png", png(studio_shot(product)))], key=ADMIN_KEY, timeout=60)
        except OSError:
            pass  # the server is killed under it

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_kill_9_at_each_stage_of_a_save_leaves_the_old_or_the_new_gallery(tmp_path):
    """Each stage of GalleryIndex.save in turn: the server stops there (serve_fixture's hook), is killed with
    SIGKILL, and the next server starts on the same folder: before the CURRENT swap the old gallery, after it
    the new one. The last start adds normally: nothing left behind blocks the next change (lock, temp dirs)."""
    directory = tmp_path / "gallery"
    make_service(directory)
    expected_new = {"write": False, "rename": False, "pointer": False, "after-pointer": True}
    for k, stage in enumerate(PAUSE_STAGES):
        before = snapshot(directory)
        marker = tmp_path / f"paused-{stage}"
        server = start_server(directory, env={"SERVE_FIXTURE_PAUSE_AT": stage, "SERVE_FIXTURE_MARKER": str(marker)})
        try:
            _add_in_background(server.url, f"kill-{stage}", NEW[k])
            deadline = time.time() + 30
            while not marker.exists():
                assert time.time() < deadline and server.proc.poll() is None, f"never reached {stage}"
                time.sleep(0.02)
        finally:
            server.kill()  # SIGKILL to the process group, mid-save
        after = snapshot(directory)
        j = assert_old_or_new(after, before, [(f"kill-{stage}", 1.25)])
        assert j == expected_new[stage], (stage, after)

    server = start_server(directory)  # a plain restart serves the survivor and takes changes
    try:
        status, health = send("GET", server.url + "/health")
        assert status == 200 and health["gallery_version"] == snapshot(directory)["version"]
        status, r = send("POST", server.url + "/gallery", fields={"sku": "after-crashes", "price": "2"},
                         files=[("image", "p.png", png(studio_shot(NEW[5])))], key=ADMIN_KEY)
        assert status == 200 and r["added"] == 1
    finally:
        server.kill()
    final = snapshot(directory)
    assert final["products"]["after-crashes"] == 2.0 and final["products"]["kill-after-pointer"] == 1.25
    assert not [p.name for p in directory.iterdir() if p.name.startswith((".tmp-", "CURRENT.tmp-"))]


@pytest.mark.slow
def test_kill_9_at_random_moments_during_adds(tmp_path):
    """12 times: a writer adds products one after another and the server is killed at a random moment; the
    folder always loads as the old gallery plus the adds committed before the kill (a prefix)."""
    directory = tmp_path / "gallery"
    make_service(directory)
    rng = random.Random(16)
    landed = []
    for attempt in range(12):
        before = snapshot(directory)
        server = start_server(directory)
        added, stop = [], threading.Event()

        def writer():
            for j in range(50):
                sku = f"r{attempt}-{j}"
                added.append((sku, 1.25))  # before the request: a kill may land after its commit
                try:
                    status, _ = send("POST", server.url + "/gallery", fields={"sku": sku, "price": "1.25"},
                                     files=[("image", "p.png", png(studio_shot(NEW[j % 8])))], key=ADMIN_KEY)
                except OSError:
                    return
                if stop.is_set() or status != 200:
                    return

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(rng.uniform(0.05, 1.5))
        stop.set()
        server.kill()
        t.join(timeout=30)
        landed.append(assert_old_or_new(snapshot(directory), before, added))
    assert sum(landed) > 0  # the kills did land among committed adds


def _state(client: TestClient, gallery: Gallery) -> tuple:
    """Everything a bad request must leave alone: the products, the trail, the version, the files on disk."""
    files = sorted(str(p.relative_to(gallery.directory)) for p in gallery.directory.rglob("*"))
    return (client.get("/gallery", params={"limit": 1000}).json()["items"],
            client.get("/gallery/history", params={"limit": 1000}).json(), gallery.version, files)


BAD_PHOTO = png(studio_shot(FAMILY_HEADS[7]))
WRONG = {"Authorization": "Bearer not-the-admin-key-000000"}
NONE: dict = {}


def _bad_requests():
    big = np.random.default_rng(0).integers(0, 256, 600_000, dtype=np.uint8).tobytes()
    ok_files = {"image": ("p.png", BAD_PHOTO, "image/png")}
    yield "no token", ("post", "/gallery", {"data": {"sku": "n", "price": "1"}, "files": ok_files}, NONE), 401
    yield "wrong token", ("post", "/gallery", {"data": {"sku": "n", "price": "1"}, "files": ok_files}, WRONG), 403
    yield "wrong token delete", ("delete", "/gallery", {"params": {"sku": str(SHOP[0].sku_id)}}, WRONG), 403
    yield "no token price", ("patch", "/gallery", {"data": {"sku": str(SHOP[0].sku_id), "price": "9"}}, NONE), 401
    yield "garbage upload", ("post", "/gallery", {"data": {"sku": "n"},
                                                  "files": {"image": ("x.jpg", b"\x00garbage" * 50, "image/jpeg")}},
                             AUTH), 415
    yield "empty upload", ("post", "/gallery", {"data": {"sku": "n"}, "files": {"image": ("x.png", b"", "image/png")}},
                           AUTH), 400
    yield "oversized upload", ("post", "/gallery", {"data": {"sku": "n"},
                                                    "files": {"image": ("x.png", big, "image/png")}}, AUTH), 413
    yield "oversized, far", ("post", "/gallery", {"data": {"sku": "n"},
                                                  "files": {"image": ("x.png", bytes(3_000_000), "image/png")}},
                             AUTH), 413
    yield "oversized checkout", ("post", "/checkout", {"files": {"image": ("x.png", big, "image/png")}}, NONE), 413
    for name, sku in [("empty sku", ""), ("blank sku", "   "), ("long sku", "x" * 201), ("newline sku", "a\nb"),
                      ("nul sku", "nul\x00")]:
        yield name, ("post", "/gallery", {"data": {"sku": sku, "price": "1"}, "files": ok_files}, AUTH), 422
    yield "path-like sku delete", ("delete", "/gallery", {"params": {"sku": "../../etc/passwd"}}, AUTH), 404
    yield "path-like sku price", ("patch", "/gallery", {"data": {"sku": "../../etc", "price": "1"}}, AUTH), 404
    yield "unicode sku delete", ("delete", "/gallery", {"params": {"sku": "Öko-Milch 🥛"}}, AUTH), 404
    yield "negative price", ("post", "/gallery", {"data": {"sku": "n", "price": "-1"}, "files": ok_files}, AUTH), 422
    yield "nan price", ("patch", "/gallery", {"data": {"sku": str(SHOP[0].sku_id), "price": "nan"}}, AUTH), 422


@pytest.mark.parametrize("name, request_, status", list(_bad_requests()), ids=[n for n, *_ in _bad_requests()])
def test_a_bad_request_gets_one_clear_4xx_and_changes_nothing(tmp_path, name, request_, status):
    app, gallery = make_service(tmp_path / "gallery", max_upload_mb=0.5, max_pixels=1_000_000)
    method, path, kwargs, headers = request_
    with TestClient(app) as client:
        before = _state(client, gallery)
        r = getattr(client, method)(path, headers=headers, **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert detail and (isinstance(detail, str) or all("msg" in d for d in detail)), detail  # says what is wrong
        assert _state(client, gallery) == before, name
        outside = sorted(p.name for p in tmp_path.iterdir())
        assert outside == ["gallery"]  # nothing written next to the gallery (a path-like SKU is never a path)
