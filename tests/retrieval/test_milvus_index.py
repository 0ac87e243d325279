"""MilvusGalleryIndex on Milvus Lite: what test_index.py's shared tests (the `backend` fixture) do not cover:
exactness against numpy, reopening, fingerprint checks on open, URIs, odd SKU strings, updates."""

import re

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

from src.retrieval.index_base import IncompatibleIndexError
from src.retrieval.milvus_index import MilvusGalleryIndex, parse_milvus_uri
from src.retrieval.search import l2_normalize

pytestmark = pytest.mark.numeric  # float results: re-run on one thread in CI

FP = "resnet50-gem@abc123+resize224"
# Inner products of unit float32 vectors summed in another order (Milvus Lite's search vs numpy's matmul) differ
# by a few float32 ulps (eps 6e-8 near 1); 1e-5 is ~100x that.
SCORE_ATOL = 1e-5


def _unit(n, dim, seed):
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, dim))).astype(np.float32)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "gallery.db"


def _brute_force(gallery, gallery_ids, queries, k):
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return gallery_ids[order], np.take_along_axis(scores, order, axis=1)


def test_search_equals_numpy_brute_force_before_and_after_removal(db):
    x, q, k = _unit(2000, 32, 0), _unit(50, 32, 1), 10
    with MilvusGalleryIndex(db, 32, FP) as index:
        ids = index.add(x, [{"sku": f"s{i}"} for i in range(len(x))])
        assert ids.tolist() == list(range(len(x)))
        res = index.search(q, k)
        want_ids, want_scores = _brute_force(x, ids, q, k)
        # Random Gaussian vectors: the gap between neighbouring top-10 scores is far above SCORE_ATOL, so ids agree.
        np.testing.assert_array_equal(res.ids, want_ids)
        np.testing.assert_allclose(res.scores, want_scores, rtol=0, atol=SCORE_ATOL)
        assert [m["sku"] for m in res.metadata[0]] == [f"s{i}" for i in want_ids[0]]
        gone = ids[::3]
        assert index.remove(ids=gone) == len(gone)
        keep = np.setdiff1d(ids, gone)
        assert len(index) == len(keep) and index.ids.tolist() == keep.tolist()
        res = index.search(q, k)
        want_ids, want_scores = _brute_force(x[keep], keep, q, k)
        np.testing.assert_array_equal(res.ids, want_ids)
        np.testing.assert_allclose(res.scores, want_scores, rtol=0, atol=SCORE_ATOL)


def test_reopen_keeps_entries_metadata_threshold_and_ids(db):
    rows = [
        {"sku": "4006381333931", "name": "Stabilo Boss – gelb", "category": "office", "price": 1.99,
         "image_path": "shelf/a.jpg", "extra": {"ean": ["4006381333931"], "facings": 3, "nested": {"ok": True}}},
        {"sku": "x", "image_path": "b.png"},
        {"sku": "y", "image_path": "c.png"},
    ]
    x = _unit(4, 16, 2)
    with MilvusGalleryIndex(db, 16, FP, threshold=0.5) as index:
        index.add(x[:3], rows)
        index.remove(skus=["x"])
        before = index.search(x[:2], 2)
    with MilvusGalleryIndex.open(db, fingerprint=FP, dim=16) as loaded:
        assert loaded.threshold == 0.5 and loaded.fingerprint == FP and loaded.dim == 16 and loaded.factory == "FLAT"
        assert len(loaded) == 2 and 1 not in loaded and 0 in loaded
        assert loaded.metadata(0) == {"id": 0, **rows[0]}
        assert loaded.metadata(2)["name"] is None and loaded.metadata(2)["extra"] == {}
        with pytest.raises(KeyError):
            loaded.metadata(1)
        after = loaded.search(x[:2], 2)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_allclose(after.scores, before.scores, rtol=0, atol=SCORE_ATOL)
        np.testing.assert_array_equal(after.accepted, before.accepted)
        assert loaded.add(x[3:], [{"sku": "z"}]).tolist() == [3]  # ids are never reused after a reopen
        loaded.set_threshold(None)
    # The constructor on an existing collection opens it too; threshold=None keeps the stored one.
    with MilvusGalleryIndex(db, 16, FP) as again:
        assert len(again) == 3 and again.threshold is None


def test_other_fingerprint_or_dim_is_refused_naming_the_uri(db):
    MilvusGalleryIndex(db, 16, FP).close()
    where, fp = re.escape(str(db)), re.escape(FP)
    with pytest.raises(IncompatibleIndexError, match=rf"{where}: .*built with '{fp}'.*'vit-b16@ffff'"):
        MilvusGalleryIndex.open(db, fingerprint="vit-b16@ffff")
    with pytest.raises(IncompatibleIndexError, match=rf"{where}#gallery: .*built with '{fp}'.*'vit-b16@ffff'"):
        MilvusGalleryIndex(db, 16, "vit-b16@ffff")
    with pytest.raises(IncompatibleIndexError, match=rf"{where}: embedding dim mismatch: .*got dim 512"):
        MilvusGalleryIndex.open(db, dim=512)
    with pytest.raises(IncompatibleIndexError, match="index has dim 16, got dim 512"):
        MilvusGalleryIndex(db, 512, FP)
    # Another collection in the same file is another gallery.
    with MilvusGalleryIndex(f"{db}#other", 512, "vit-b16@ffff") as other:
        assert other.dim == 512


def test_missing_and_foreign_collections_are_refused(db, tmp_path):
    with pytest.raises(FileNotFoundError, match="no Milvus Lite file"):
        MilvusGalleryIndex.open(tmp_path / "nothing.db")
    client = MilvusClient(str(db))
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    client.create_collection("theirs", schema=schema)
    client.close()
    with pytest.raises(FileNotFoundError, match="no gallery collection"):
        MilvusGalleryIndex.open(f"{db}#absent")
    with pytest.raises(FileNotFoundError, match="no gallery collection"):
        MilvusGalleryIndex(f"{db}#absent", 4, FP, create=False)
    with pytest.raises(ValueError, match=r"#theirs is not a gallery collection.*refusing"):
        MilvusGalleryIndex(f"{db}#theirs", 4, FP)


def test_uris():
    assert parse_milvus_uri("data/g.db") == ("data/g.db", "gallery")
    assert parse_milvus_uri("data/g.db#store_17") == ("data/g.db", "store_17")
    assert parse_milvus_uri("milvus://db.shop:19530") == ("http://db.shop:19530", "gallery")
    assert parse_milvus_uri("milvus+https://db.shop:443#g2") == ("https://db.shop:443", "g2")
    assert parse_milvus_uri("http://localhost:19530") == ("http://localhost:19530", "gallery")
    with pytest.raises(ValueError, match="not a Milvus gallery URI: 'outputs/gallery'"):
        parse_milvus_uri("outputs/gallery")


def test_odd_sku_strings_add_remove_update(db):
    # Filters go through integer hashes, so quotes, backslashes, expression syntax and unicode need no escaping.
    skus = ['a"b', "c'd", "e\\f", 'x" or id >= 0 or "', "../../etc/passwd", "Äpfel 🍎 りんご", "L" * 5000]
    x = _unit(len(skus) + 1, 8, 3)
    with MilvusGalleryIndex(db, 8, FP) as index:
        index.add(x[:-1], [{"sku": s, "image_path": s} for s in skus])
        assert index.add(x[:-1], [{"sku": s, "image_path": s} for s in skus]).tolist() == list(range(len(skus)))
        index.add(x[-1:], [{"sku": skus[0], "image_path": "second.jpg"}])
        assert len(index) == len(skus) + 1
        assert [index.metadata(i)["sku"] for i in range(len(skus))] == skus
        assert index.update(skus=[skus[0], skus[5]], price=2.5, name="n") == 3
        assert index.metadata(7)["price"] == 2.5 and index.metadata(5)["name"] == "n"
        assert index.metadata(1)["price"] is None
        res = index.search(x[7:8], 1)  # an upsert keeps the vector
        assert res.ids[0, 0] == 7 and res.scores[0, 0] == pytest.approx(1.0, abs=SCORE_ATOL)
        assert index.remove(skus=[skus[3]]) == 1  # the injection-looking one removes only itself
        assert index.remove(skus=skus[0]) == 2
        assert sorted(m["sku"] for m in (index.metadata(i) for i in index.ids)) == sorted(
            s for s in skus if s not in (skus[0], skus[3]))
        with pytest.raises(ValueError, match="only name, category and price"):
            index.update(skus=["x"], sku="y")
        with pytest.raises(ValueError, match="longer than 65535 bytes"):
            index.add(x[:1], [{"sku": "é" * 40000}])
