"""Gallery changes over HTTP: admin keys (401 / 403 / 503, constant-time compare), the audit trail
(GET /gallery/history, surviving a restart), odd SKU strings, CORS."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

import src.service.auth as auth
from src.service.auth import AdminKeys, KeyFileError, load_admin_keys, read_key_file
from tests.recognition.helpers import studio_shot
from tests.service.conftest import ADMIN_KEY, AUTH, FAMILY_HEADS, SHOP, make_service, png

NEW = FAMILY_HEADS[7]


def _photo(sku=NEW):
    return {"image": ("p.png", png(studio_shot(sku)), "image/png")}


def _changes(client, headers):
    """One of each change; returns their status codes."""
    return [client.post("/gallery", data={"sku": "new", "price": "2"}, files=_photo(), headers=headers).status_code,
            client.patch("/gallery", data={"sku": str(SHOP[0].sku_id), "price": "9"}, headers=headers).status_code,
            client.delete("/gallery", params={"sku": str(SHOP[1].sku_id)}, headers=headers).status_code]


def _state(client):
    return client.get("/gallery").json()["items"], client.get("/gallery/history").json()["total"]


@pytest.fixture
def anonymous(tmp_path):
    """A client that sends no key (a till, a phone on the shop network)."""
    app, gallery = make_service(tmp_path / "gallery")
    with TestClient(app) as client:
        yield client, gallery


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer "}, 401),
    ({"Authorization": f"Basic {ADMIN_KEY}"}, 401),
    ({"Authorization": "Bearer wrong-key-0123456789xx"}, 403),
    ({"Authorization": f"Bearer {ADMIN_KEY}x"}, 403),
    ({"Authorization": f"Bearer {ADMIN_KEY[:-1]}"}, 403),
])
def test_missing_or_wrong_key_changes_nothing(anonymous, headers, status):
    client, _ = anonymous
    before = _state(client)
    assert _changes(client, headers) == [status] * 3
    r = client.post("/gallery", data={"sku": "x"}, files=_photo(), headers=headers)
    assert "Bearer" in r.json()["detail"] or "not valid" in r.json()["detail"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert _state(client) == before


def test_right_keys_work_and_the_trail_names_the_key_id_never_the_key(anonymous):
    client, gallery = anonymous
    assert _changes(client, AUTH) == [200, 200, 200]
    r = client.post("/gallery", data={"sku": "by-second", "price": "1"}, files=_photo(SHOP[5]),
                    headers={"Authorization": "bearer another-key-abcdefghij"})  # scheme is case-insensitive
    assert r.status_code == 200
    ids = [row["key_id"] for row in client.get("/gallery/history", params={"limit": 5}).json()["items"]]
    assert ids == ["second"] + ["test-admin"] * 3 + [None]  # add; remove, price, add; the fixture's (no key)
    sqlite = (gallery.directory / gallery.version / "metadata.sqlite").read_bytes()
    assert ADMIN_KEY.encode() not in sqlite and b"another-key" not in sqlite and b"test-admin" in sqlite


def test_tokens_are_compared_in_constant_time(anonymous, monkeypatch):
    client, _ = anonymous
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    wrong = {"Authorization": "Bearer short"}
    assert client.delete("/gallery", params={"sku": "nope"}, headers=wrong).status_code == 403
    assert calls == [(32, 32), (32, 32)]  # every key, as equal-length digests: no early exit, no length leak
    calls.clear()
    assert client.delete("/gallery", params={"sku": "nope"}, headers=AUTH).status_code == 404  # authorised
    assert calls == [(32, 32), (32, 32)]  # the first key matched, the second was still compared


def test_without_a_key_changes_are_refused_and_the_rest_works(tmp_path):
    app, _ = make_service(tmp_path / "g", admin_keys=AdminKeys())
    with TestClient(app) as client:
        before = _state(client)
        for headers in ({}, AUTH):
            assert _changes(client, headers) == [503] * 3
        detail = client.post("/gallery", data={"sku": "x"}, files=_photo(), headers=AUTH).json()["detail"]
        assert "no admin key" in detail and "RECOGNITION_ADMIN_KEY" in detail and "--admin-key-file" in detail
        assert _state(client) == before
        assert client.get("/health").json()["changes_enabled"] is False
        assert client.post("/recognize", files=_photo(SHOP[2])).json()["items"][0]["sku"] == str(SHOP[2].sku_id)
        assert client.post("/checkout", files=_photo(SHOP[2])).json()["total"] == SHOP[2].price
        assert client.get("/").status_code == 200


def test_audit_rows_for_add_price_change_remove_survive_a_restart(service, tmp_path):
    client, gallery = service
    data = png(studio_shot(NEW))
    r = client.post("/gallery", data={"sku": "new", "price": "2.5"}, files={"image": ("p.png", data, "image/png")})
    assert r.json()["added"] == 1
    r = client.patch("/gallery", data={"sku": "new", "price": "3"})
    assert r.json() == {"sku": "new", "old_price": 2.5, "new_price": 3.0, "images": 1}
    assert client.patch("/gallery", data={"sku": "missing", "price": "3"}).status_code == 404
    assert client.patch("/gallery", data={"sku": "new", "price": "-3"}).status_code == 422
    shop0 = str(SHOP[0].sku_id)
    r = client.post("/gallery", data={"sku": shop0, "price": "0.5"}, files=_photo(FAMILY_HEADS[6]))  # new photo,
    assert r.json()["prices_changed"] == [shop0]  # new price: a price change of the product
    assert client.delete("/gallery", params={"sku": "new"}).json()["removed"] == 1
    digest = hashlib.sha256(data).hexdigest()
    expected = [("remove", "new", 3.0, None, digest),
                ("add", shop0, SHOP[0].price, 0.5, hashlib.sha256(png(studio_shot(FAMILY_HEADS[6]))).hexdigest()),
                ("price", shop0, SHOP[0].price, 0.5, None),
                ("price", "new", 2.5, 3.0, None),
                ("add", "new", None, 2.5, digest)]
    # The 6 products the fixture added without a key come first (key id None, no image hash: not uploads).
    history = client.get("/gallery/history", params={"limit": 5}).json()
    assert history["total"] == 6 + 5
    assert [(r["action"], r["sku"], r["old_price"], r["new_price"], r["image_sha256"]) for r in history["items"]] \
        == expected
    assert {r["key_id"] for r in history["items"]} == {"test-admin"}
    page2 = client.get("/gallery/history", params={"limit": 5, "offset": 5}).json()["items"]
    assert [r["seq"] for r in page2] == [6, 5, 4, 3, 2] and page2[0]["key_id"] is None
    assert client.get("/gallery/history", params={"sku": "new"}).json()["total"] == 3
    assert client.get("/gallery/history", params={"limit": 0}).status_code == 422

    app, _ = make_service(gallery.directory)  # a restart: a new process opening the same folder
    with TestClient(app) as restarted:
        assert restarted.get("/gallery/history").json() == client.get("/gallery/history").json()


ODD = ["../x", "../../etc/passwd", "..\\..\\x", "/abs/path", "uploads/../CURRENT", "CURRENT", "v-1-abc", "%2e%2e%2f",
       "Milch 1 l – Öko 🥛", "名前", "x" * 200, "a b", "'; DROP TABLE products; --"]


def test_odd_skus_are_opaque_strings(service, tmp_path):
    client, gallery = service
    outside = sorted(p.name for p in tmp_path.iterdir())
    for i, sku in enumerate(ODD):
        r = client.post("/gallery", data={"sku": sku, "price": "1"}, files=_photo(FAMILY_HEADS[i % 8]))
        assert r.status_code == 200, (sku, r.text)
    listed = {p["sku"] for p in client.get("/gallery", params={"limit": 100}).json()["items"]}
    assert set(ODD) <= listed
    assert {r["sku"] for r in client.get("/gallery/history", params={"limit": 100}).json()["items"]} >= set(ODD)
    assert client.patch("/gallery", data={"sku": ODD[0], "price": "2"}).json()["old_price"] == 1.0
    for sku in ODD:
        assert client.delete("/gallery", params={"sku": sku}).json()["removed"] >= 1, sku
    # Nothing was written outside the gallery folder; inside, uploads are named by content hash only.
    assert sorted(p.name for p in tmp_path.iterdir()) == outside
    assert all(len(p.stem) == 64 for p in (gallery.directory / "uploads").iterdir())
    assert client.get("/health").json()["gallery_images"] == 6
    for bad in ["x" * 201, "a\nb", "tab\there", "nul\x00"]:
        r = client.post("/gallery", data={"sku": bad}, files=_photo())
        assert r.status_code == 422, (bad, r.text)
        assert client.delete("/gallery", params={"sku": bad}).status_code == 422
    assert client.get("/health").json()["gallery_images"] == 6


def test_cors_is_off_unless_origins_are_listed(tmp_path):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE",
                 "Access-Control-Request-Headers": "authorization"}
    app, _ = make_service(tmp_path / "a")
    with TestClient(app) as client:
        assert "access-control-allow-origin" not in client.options("/gallery", headers=preflight).headers
        plain = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
    app, _ = make_service(tmp_path / "b", cors_origins=["https://till.example"])
    with TestClient(app) as client:
        assert "access-control-allow-origin" not in client.options("/gallery", headers=preflight).headers
        ok = client.options("/gallery", headers={**preflight, "Origin": "https://till.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://till.example"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()


def test_key_files(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# tills\ntill-1:abcdefghijklmnopqrst\n\n office : ABCDEFGHIJKLMNOPQRSTUVWX\n")
    with pytest.raises(KeyFileError, match=":4: the key of 'office'"):  # a space would be part of the key
        read_key_file(f)
    f.write_text("# tills\ntill-1:abcdefghijklmnopqrst\n\noffice:ABCDEFGHIJKLMNOPQRSTUVWX\n")
    assert read_key_file(f) == {"till-1": "abcdefghijklmnopqrst", "office": "ABCDEFGHIJKLMNOPQRSTUVWX"}
    keys = load_admin_keys(f, environ={"RECOGNITION_ADMIN_KEY": "from-the-environment-123"})
    assert [k for k, _ in keys.entries] == ["till-1", "office", "env"]
    assert keys.identify("ABCDEFGHIJKLMNOPQRSTUVWX") == "office" and keys.identify("from-the-environment-123") == "env"
    for text, message in [("no-colon-here-abcdefghijkl\n", ":1: expected"), ("a:short\n", ":1: the key of 'a'"),
                          ("a:abcdefghijklmnopqr\na:abcdefghijklmnopqrs\n", ":2: key id 'a' appears twice"),
                          ("bad id:abcdefghijklmnopqr\n", "key id 'bad id'")]:
        f.write_text(text)
        with pytest.raises(KeyFileError, match=message) as err:
            read_key_file(f)
        assert "abcdefghijklmnopq" not in str(err.value)  # a message never shows a key
    with pytest.raises(KeyFileError, match="cannot read"):
        load_admin_keys(tmp_path / "missing")
    assert not load_admin_keys(environ={})
    env_only = load_admin_keys(environ={"RECOGNITION_ADMIN_KEY_FILE": "", "RECOGNITION_ADMIN_KEY": "x" * 16})
    assert env_only.identify("x" * 16) == "env" and env_only.identify("x" * 15) is None
