"""Gallery building from an image list + catalogue, adds that embed only new images, removal, persistence,
threshold calibration for a target false-accept rate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src.data.retail_world import photometric as ph
from src.recognition.calibration import choose_threshold, open_set_scores
from src.recognition.gallery import Gallery, ProductImage, entries_from_image_list, read_catalogue
from src.retrieval.index import GalleryIndex
from src.retrieval.search import l2_normalize
from src.retrieval.threshold import far_frr
from tests.recognition.conftest import FAMILY_HEADS
from tests.recognition.helpers import CATALOGUE, studio_shot


def write_list(root, skus, name="gallery.txt", views=1):
    """studio shots as JPEGs + an image list `images/<sku>_<v>.jpg <sku> uid` + catalogue.json."""
    lines = []
    for s in skus:
        for v in range(views):
            rel = f"images/{s.sku_id:04d}_{v}.jpg"
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(ph.jpeg_bytes(studio_shot(s), 95 - 5 * v))
            lines.append(f"{rel} {s.sku_id} {name}_{s.sku_id}_{v}")
    (root / name).write_text("\n".join(lines) + "\n")
    (root / "catalogue.json").write_text(json.dumps({"skus": [s.to_dict() for s in CATALOGUE]}))
    return root / name


class CountingEmbedder:
    """Wraps an Embedder and counts the crops it embeds."""

    def __init__(self, inner):
        self.inner, self.count = inner, 0
        self.fingerprint, self.dim = inner.fingerprint, inner.dim

    def embed(self, crops):
        self.count += len(crops)
        return self.inner.embed(crops)

    def embed_gallery(self, images):
        self.count += len(images)
        return self.inner.embed_gallery(images)


def test_build_from_image_list_with_catalogue(tmp_path, embedder):
    lst = write_list(tmp_path, FAMILY_HEADS[:4])
    entries = entries_from_image_list(lst, read_catalogue(tmp_path / "catalogue.json"), root=tmp_path)
    gallery = Gallery.create(embedder, tmp_path / "index")
    assert gallery.add(entries) == {"added": 4, "skipped": 0, "count": 4, "prices_changed": []}
    products = gallery.products()
    s = FAMILY_HEADS[0]
    assert products[0] == {"sku": str(s.sku_id), "name": s.name, "category": s.category, "price": s.price,
                           "images": 1}
    reopened = Gallery.open(tmp_path / "index", embedder)  # saved after the add
    assert len(reopened) == 4 and reopened.products() == products


def test_add_embeds_only_new_images_and_remove_persists(tmp_path, embedder):
    counting = CountingEmbedder(embedder)
    lst = write_list(tmp_path, FAMILY_HEADS[:3], views=2)
    gallery = Gallery(GalleryIndex(embedder.dim, embedder.fingerprint), counting, tmp_path / "index")
    gallery.add(entries_from_image_list(lst, root=tmp_path))
    assert counting.count == 6
    lst2 = write_list(tmp_path, FAMILY_HEADS[:5], name="more.txt", views=2)  # 3 products known + 2 new
    entries = entries_from_image_list(lst2, root=tmp_path)
    assert gallery.add(entries) == {"added": 4, "skipped": 6, "count": 10, "prices_changed": []}
    assert counting.count == 10  # only the 4 new images were read and embedded
    assert gallery.add(entries)["added"] == 0 and counting.count == 10
    assert gallery.remove([str(FAMILY_HEADS[0].sku_id)]) == 2
    assert gallery.remove(["no-such-sku"]) == 0
    reopened = Gallery.open(tmp_path / "index", embedder)
    assert len(reopened) == 8 and str(FAMILY_HEADS[0].sku_id) not in {p["sku"] for p in reopened.products()}
    # A removed product can come back (its keys were forgotten with it).
    assert gallery.add([e for e in entries if e.sku == str(FAMILY_HEADS[0].sku_id)])["added"] == 2


def test_failed_save_leaves_memory_as_on_disk(tmp_path, embedder, monkeypatch):
    gallery = Gallery.create(embedder, tmp_path / "index")
    gallery.add([ProductImage("a", "a.jpg", image=studio_shot(FAMILY_HEADS[0]))])

    def broken(directory, audit=()):
        raise OSError("disk full")

    monkeypatch.setattr(gallery.index, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        gallery.add([ProductImage("b", "b.jpg", image=studio_shot(FAMILY_HEADS[1]))])
    assert len(gallery) == 1
    with pytest.raises(OSError, match="disk full"):
        gallery.remove(["a"])
    assert len(gallery) == 1 and gallery.products()[0]["sku"] == "a"
    monkeypatch.undo()
    assert gallery.add([ProductImage("b", "b.jpg", image=studio_shot(FAMILY_HEADS[1]))])["added"] == 1  # retry


def test_open_set_scores_hand_computed():
    g = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    q = l2_normalize(np.array([[0.9, 0.4, 0.1], [0.1, 0.2, 0.9]], np.float32))
    genuine, impostor = open_set_scores(g, ["a", "b", "c"], q, ["a", "z"])
    np.testing.assert_allclose(genuine, [q[0, 0]])  # "z" has no gallery image: impostor only
    np.testing.assert_allclose(impostor, [q[0, 1], q[1, 2]])


def test_threshold_for_target_far_is_stored(tmp_path, embedder):
    """Queries: the 8 family heads' shots under lighting changes. Impostor = each query's best other SKU."""
    gallery = Gallery.create(embedder, tmp_path / "index")
    gallery.add([ProductImage(str(s.sku_id), f"{s.sku_id}.jpg", image=studio_shot(s)) for s in FAMILY_HEADS])
    rng = np.random.default_rng(0)
    val = [ProductImage(str(s.sku_id), f"val/{s.sku_id}_{k}.jpg", image=ph.lighting(studio_shot(s), rng))
           for s in FAMILY_HEADS for k in range(3)]
    report = gallery.calibrate(val, target_far=0.25)
    vectors = embedder.embed([e.image for e in val])
    genuine, impostor = open_set_scores(*[gallery.index.vectors()[1], [str(s.sku_id) for s in FAMILY_HEADS]],
                                        vectors, [e.sku for e in val])
    assert len(genuine) == len(impostor) == 24
    assert report.far <= 0.25 and report.far == far_frr(genuine, impostor, report.threshold)[0]
    assert (impostor >= report.threshold).sum() == 6  # floor(0.25 * 24) impostors accepted, no more
    assert GalleryIndex.load(tmp_path / "index").threshold == report.threshold
    with pytest.raises(ValueError, match="two SKUs"):
        one = Gallery.create(embedder)
        one.add([ProductImage("a", "a.jpg", image=studio_shot(FAMILY_HEADS[0]))])
        choose_threshold(one.index, vectors[:1], ["a"], 0.1)


def test_catalogue_and_list_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json:1"):
        read_catalogue(tmp_path / "bad.json")
    lst = write_list(tmp_path, FAMILY_HEADS[:1])
    with pytest.raises(KeyError, match="not in the catalogue"):
        entries_from_image_list(lst, {"999": {}}, root=tmp_path)
