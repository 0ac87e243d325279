"""The gallery's audit trail (add / remove / price change rows committed with the change, kept across restarts,
old versions without the table migrated) and several processes on one directory (file lock, refresh)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime

import pytest

from src.recognition.gallery import Gallery, ProductImage
from src.retrieval.gallery_store import current_version, read_audit
from tests.recognition.conftest import FAMILY_HEADS
from tests.recognition.helpers import CATALOGUE, studio_shot

VARIANTS = [s for s in CATALOGUE if s.variant == 1]


def entry(sku, k, price=None, sha=None):
    return ProductImage(sku, f"upload:{sku}-{k}", price=price, image=studio_shot(FAMILY_HEADS[k % 8]), sha256=sha)


def trail(gallery, **kw):
    return [(r["action"], r["sku"], r["old_price"], r["new_price"], r["image_sha256"], r["key_id"])
            for r in gallery.history(**kw)["items"]]


@pytest.mark.parametrize("on_disk", [True, False])
def test_add_price_change_remove_are_audited(tmp_path, embedder, on_disk):
    gallery = Gallery.create(embedder, tmp_path / "g" if on_disk else None)
    gallery.add([entry("a", 0, 1.5, "aa" * 32)], key_id="till-1")
    # A new image of "a" at another price: one price change for the SKU plus the add, all images repriced.
    r = gallery.add([entry("a", 1, 2.0, "bb" * 32), entry("b", 2, None, "cc" * 32)], key_id="office")
    assert r["added"] == 2 and r["prices_changed"] == ["a"]
    assert {p["sku"]: (p["price"], p["images"]) for p in gallery.products()} == {"a": (2.0, 2), "b": (None, 1)}
    assert gallery.set_price("b", 0.99, key_id="office") == {"sku": "b", "old_price": None, "new_price": 0.99,
                                                             "images": 1}
    gallery.set_price("b", 0.99, key_id="office")  # no change: no row
    with pytest.raises(KeyError):
        gallery.set_price("nope", 1.0)
    assert gallery.remove(["a"], key_id="till-1") == 2
    expected = [  # newest first
        ("remove", "a", 2.0, None, "bb" * 32, "till-1"),
        ("remove", "a", 2.0, None, "aa" * 32, "till-1"),
        ("price", "b", None, 0.99, None, "office"),
        ("add", "b", None, None, "cc" * 32, "office"),
        ("add", "a", 1.5, 2.0, "bb" * 32, "office"),
        ("price", "a", 1.5, 2.0, None, "office"),
        ("add", "a", None, 1.5, "aa" * 32, "till-1"),
    ]
    assert sorted(trail(gallery)[:2]) == sorted(expected[:2]) and trail(gallery)[2:] == expected[2:]
    h = gallery.history(limit=2, offset=1)
    assert h["total"] == 7 and [r["seq"] for r in h["items"]] == [6, 5]
    assert gallery.history(sku="b")["total"] == 2
    times = [datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in gallery.history()["items"]]
    assert all(t.utcoffset().total_seconds() == 0 for t in times) and times == sorted(times, reverse=True)
    if on_disk:  # kept across a restart, and by the next save of the reopened gallery
        reopened = Gallery.open(tmp_path / "g", embedder)
        assert trail(reopened)[2:] == expected[2:] and reopened.history()["total"] == 7
        reopened.add([entry("c", 3, 4.0)])
        assert reopened.history()["total"] == 8 and trail(reopened)[0][:2] == ("add", "c")


def test_failed_save_records_nothing(tmp_path, embedder, monkeypatch):
    gallery = Gallery.create(embedder, tmp_path / "g")
    gallery.add([entry("a", 0, 1.0)])

    def broken(directory, audit=()):
        raise OSError("disk full")

    monkeypatch.setattr(gallery.index, "save", broken)
    with pytest.raises(OSError):
        gallery.add([entry("b", 1, 2.0)])
    with pytest.raises(OSError):
        gallery.set_price("a", 5.0)
    with pytest.raises(OSError):
        gallery.remove(["a"])
    assert gallery.products()[0]["price"] == 1.0 and len(gallery) == 1
    monkeypatch.undo()
    assert gallery.history()["total"] == 1
    assert Gallery.open(tmp_path / "g", embedder).history()["total"] == 1


def test_version_without_audit_table_is_migrated(tmp_path, embedder):
    """A gallery saved before the audit table existed: opens, reads as an empty history, gains the table."""
    gallery = Gallery.create(embedder, tmp_path / "g")
    gallery.add([entry("a", 0, 1.0)])
    version = tmp_path / "g" / current_version(tmp_path / "g")
    with sqlite3.connect(version / "metadata.sqlite") as conn:
        conn.execute("DROP TABLE audit")
    conn.close()
    with sqlite3.connect(version / "metadata.sqlite") as conn:
        conn.execute("VACUUM")
    conn.close()
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["file_sizes"]["metadata.sqlite"] = (version / "metadata.sqlite").stat().st_size
    del manifest["audit_rows"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    old = Gallery.open(tmp_path / "g", embedder)
    assert len(old) == 1 and old.history() == {"total": 0, "offset": 0, "items": []}
    old.remove(["a"], key_id="k")
    assert trail(old) == [("remove", "a", 1.0, None, None, "k")]
    assert read_audit(tmp_path / "g")[0] == 1


def test_two_processes_sharing_a_directory_lose_no_add(tmp_path, embedder):
    """Two Gallery objects on one directory stand for two workers (each has its own thread lock, so only the
    directory's file lock keeps them apart). Concurrent adds all survive; each follows the other's changes."""
    Gallery.create(embedder, tmp_path / "g").save()
    a, b = Gallery.open(tmp_path / "g", embedder), Gallery.open(tmp_path / "g", embedder)
    a.add([entry("first", 0, 1.0)])
    assert len(b) == 0 and b.refresh() and len(b) == 1 and b.version == a.version
    assert not b.refresh()  # nothing moved: no reload
    b.add([entry("second", 1, 2.0)])  # b is current; a is stale and must catch up before writing
    a.set_price("first", 1.25)
    assert {p["sku"] for p in a.products()} == {"first", "second"}

    n = 6
    barrier = threading.Barrier(2)
    errors = []

    def adder(gallery, name):
        try:
            barrier.wait()
            for j in range(n):
                gallery.add([entry(f"{name}-{j}", j, float(j))], key_id=name)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=adder, args=(g, name)) for g, name in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    on_disk = Gallery.open(tmp_path / "g", embedder)
    assert len(on_disk) == 2 + 2 * n
    assert on_disk.history()["total"] == 3 + 2 * n  # 2 adds + 1 price change before, then 2n adds
    assert {p["sku"]: p["price"] for p in on_disk.products()}["first"] == 1.25
    for g in (a, b):
        g.refresh()
        assert len(g) == 2 + 2 * n and g.version == on_disk.version
