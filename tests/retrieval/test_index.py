import os
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

import src.retrieval.gallery_store as gallery_store
from src.retrieval.index import GalleryIndex
from src.retrieval.index_base import IncompatibleIndexError
from src.retrieval.milvus_index import MilvusGalleryIndex
from src.retrieval.search import knn_search, l2_normalize
from src.retrieval.threshold import threshold_for_far

from .conftest import clustered

pytestmark = pytest.mark.numeric  # float results: re-run on one thread in CI

REPO = Path(__file__).resolve().parents[2]
FP = "resnet50-gem@abc123+resize224"


def _rows(prefix: str, n: int) -> list[dict]:
    return [{"sku": f"{prefix}{i}", "image_path": f"img/{prefix}{i}.jpg"} for i in range(n)]


_OPENED: list[MilvusGalleryIndex] = []


def _new(dim, factory="Flat", fingerprint=FP, tmp=None, **kwargs):
    """A faiss GalleryIndex, or with ``factory="milvus"`` a MilvusGalleryIndex in a Milvus Lite file under ``tmp``
    (the backends share these semantics; closed after the test by ``_close_milvus``)."""
    if factory != "milvus":
        return GalleryIndex(dim, fingerprint, factory=factory, **kwargs)
    index = MilvusGalleryIndex(Path(tmp) / f"milvus{len(_OPENED)}.db", dim, fingerprint, **kwargs)
    _OPENED.append(index)
    return index


@pytest.fixture(autouse=True)
def _close_milvus():
    yield
    while _OPENED:
        _OPENED.pop().close()


# The tests taking `backend` run against the exact faiss index and against Milvus (Milvus Lite, FLAT).
BACKENDS = ["Flat", "milvus"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _gallery(factory="Flat", n=600, dim=16, seed=0, tmp=None, **kwargs):
    x, _, _ = clustered(n, dim, 30, 0.8, seed=seed)
    index = _new(dim, factory, tmp=tmp, **kwargs)
    index.add(x, _rows("p", n))
    return index, x


def _queries(n=40, dim=16, seed=99) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, dim)))


# Inner products of unit float32 vectors: faiss may sum the 16 terms in another order after the index changes
# (SIMD blocking, other machine), which moves a score by a few float32 ulps (eps 6e-8 near 1); 1e-5 is ~100x that.
SCORE_ATOL = 1e-5


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=SCORE_ATOL)


# ----------------------------------------------------------------------------- approximate vs exact
def test_approximate_indexes_agree_with_exact_search():
    # 5k vectors, 64-d, 100 noisy clusters; 500 queries from the same clusters.
    # Measured here (faiss 1.15.1, 1 thread, seeded): top-1 id agreement with exact search
    # HNSW32 (efSearch 64) 1.000, IVF64,Flat (nprobe 16) 0.960, IVF64,PQ16x4 0.222 (PQ scores are
    # approximate, near-equal neighbours swap); label recall@1 exact 0.884, HNSW32 0.884,
    # IVF64,Flat 0.878, IVF64,PQ16x4 0.866. Asserted with margin below.
    x, labels, centres = clustered(5000, 64, 100, 1.5, seed=0)
    q, q_labels, _ = clustered(500, 64, 100, 1.5, seed=1, centres=centres)
    rows = [{"sku": f"s{i}"} for i in range(len(x))]
    _, exact = knn_search(q, x, 1)
    exact_label_recall = (labels[exact[:, 0]] == q_labels).mean()
    results = {}
    for factory in ("HNSW32", "IVF64,Flat", "IVF64,PQ16x4"):
        index = GalleryIndex(64, FP, factory=factory)
        ids = index.add(x, rows)
        assert (ids == np.arange(len(x))).all()  # ids are assigned in order, so they are gallery rows
        top1 = index.search(q, 1).ids[:, 0]
        results[factory] = ((top1 == exact[:, 0]).mean(), (labels[top1] == q_labels).mean())
    assert results["HNSW32"][0] >= 0.97, results
    assert results["IVF64,Flat"][0] >= 0.93, results
    assert results["IVF64,Flat"][1] >= exact_label_recall - 0.03, (results, exact_label_recall)
    # PQ approximates the scores, so only the label recall is comparable.
    assert results["IVF64,PQ16x4"][1] >= exact_label_recall - 0.05, (results, exact_label_recall)


def test_search_breadth_trades_speed_for_exactness(tmp_path):
    x, _, centres = clustered(3000, 32, 60, 1.5, seed=0)
    q, _, _ = clustered(300, 32, 60, 1.5, seed=1, centres=centres)
    _, exact = knn_search(q, x, 1)
    index = GalleryIndex(32, FP, factory="IVF64,Flat", nprobe=1)
    index.add(x, [{"sku": f"s{i}"} for i in range(len(x))])
    narrow = (index.search(q, 1).ids[:, 0] == exact[:, 0]).mean()
    index.set_search_breadth(nprobe=64)  # every list: IVF-Flat becomes exact
    assert index.nprobe == 64 and (index.search(q, 1).ids[:, 0] == exact[:, 0]).all()
    assert narrow < 0.95, narrow  # one list of 64 misses neighbours in other lists
    index.save(tmp_path / "g")
    assert GalleryIndex.load(tmp_path / "g").nprobe == 64
    with pytest.raises(ValueError, match="ef_search must be a positive integer"):
        index.set_search_breadth(ef_search=0)


def test_contains_follows_add_and_remove():
    index, _ = _gallery("HNSW32", n=50)  # HNSW cannot remove: the entry is tombstoned, yet not contained
    assert 3 in index and 50 not in index
    index.remove(ids=[3])
    assert 3 not in index and index.num_tombstones == 1


# ----------------------------------------------------------------------------- add / remove / rebuild
@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat", "milvus"])
def test_add_then_remove_restores_previous_answers(factory, tmp_path):
    index, _ = _gallery(factory, tmp=tmp_path)
    q = _queries()
    before = index.search(q, 5)
    near = l2_normalize(q + 0.05 * np.random.default_rng(5).normal(size=q.shape))  # beat every old result
    index.add(near, _rows("new", len(near)))
    during = index.search(q, 5)
    assert all(m[0]["sku"].startswith("new") for m in during.metadata)
    assert index.remove(skus=[f"new{i}" for i in range(len(near))]) == len(near)
    _same(index.search(q, 5), before)
    assert len(index) == 600
    assert index.num_tombstones == (len(near) if factory == "HNSW32" else 0)  # HNSW cannot remove
    index.rebuild()
    assert index.num_tombstones == 0
    _same(index.search(q, 5), before)


def test_remove_by_id_and_sku_and_unknown_ones(backend, tmp_path):
    index, _ = _gallery(backend, n=50, tmp=tmp_path)
    assert index.remove(ids=[0, 1, 999]) == 2  # unknown ids are ignored
    assert index.remove(skus=["p2", "nope"]) == 1
    assert index.remove(ids=[0]) == 0
    assert index.remove(skus="p3") == 1  # a single sku string, not its characters
    assert index.remove(ids=np.array([4, 5])) == 2
    assert index.remove(ids=6) == 1
    assert len(index) == 43 and not set(range(7)) & set(index.ids.tolist())
    assert not set(range(7)) & set(index.search(_queries(), 43).ids.ravel().tolist())


def test_add_skips_existing_entries_and_batch_duplicates(backend, tmp_path):
    index, x = _gallery(backend, n=20, tmp=tmp_path)
    again = index.add(x[:5], _rows("p", 5))
    assert again.tolist() == [0, 1, 2, 3, 4] and len(index) == 20
    rows = [{"sku": "A", "image_path": "a.jpg"}, {"sku": "A", "image_path": "a.jpg"}, {"sku": "A", "image_path": "b"}]
    assert index.add(x[:3], rows).tolist() == [20, 20, 21]
    assert len(index) == 22


def test_sharded_index_equals_single_index(tmp_path):
    single, x = _gallery("Flat")
    sharded = GalleryIndex(16, FP, factory="Flat", num_shards=3)
    sharded.add(x, _rows("p", len(x)))
    q = _queries()
    _same(sharded.search(q, 5), single.search(q, 5))
    assert sharded.remove(ids=list(range(0, 600, 7))) == single.remove(ids=list(range(0, 600, 7)))
    _same(sharded.search(q, 5), single.search(q, 5))
    sharded.save(tmp_path / "g")
    assert sorted(p.name for p in next((tmp_path / "g").glob("v-*")).glob("index*")) == [
        "index.shard0.faiss",
        "index.shard1.faiss",
        "index.shard2.faiss",
    ]
    _same(GalleryIndex.load(tmp_path / "g").search(q, 5), single.search(q, 5))


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks the CPU fallback")
def test_use_gpu_without_gpu_warns_and_stays_on_cpu():
    with pytest.warns(UserWarning, match="sees no GPU"):
        index = GalleryIndex(8, FP, use_gpu=True)
    index.add(_queries(10, 8), _rows("p", 10))
    assert index.search(_queries(2, 8), 1).ids.shape == (2, 1)


# ----------------------------------------------------------------------------- errors
def test_fingerprint_and_dim_mismatch_refused_by_search_and_add(backend, tmp_path):
    index, _ = _gallery(backend, n=20, tmp=tmp_path)
    with pytest.raises(IncompatibleIndexError, match="resnet50-gem@abc123.*'vit-b16@ffff'"):
        index.search(_queries(2), 1, fingerprint="vit-b16@ffff")
    with pytest.raises(IncompatibleIndexError, match="index has dim 16, got dim 8"):
        index.search(_queries(2, 8), 1)
    with pytest.raises(IncompatibleIndexError, match="index has dim 16, got dim 32"):
        index.add(_queries(2, 32), _rows("x", 2))
    index.check_compatible(FP, 16)
    assert len(index) == 20


def test_fingerprint_and_dim_mismatch_refused_by_load(tmp_path):
    index, _ = _gallery("Flat", n=20)
    index.save(tmp_path / "g")
    with pytest.raises(IncompatibleIndexError, match="vit-b16@ffff"):
        GalleryIndex.load(tmp_path / "g", fingerprint="vit-b16@ffff")
    with pytest.raises(IncompatibleIndexError, match="index has dim 16, got dim 512"):
        GalleryIndex.load(tmp_path / "g", dim=512)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "milvus"])
def test_empty_gallery_search_is_a_clear_error(factory, tmp_path):
    index = _new(16, factory, tmp=tmp_path)
    with pytest.raises(ValueError, match="gallery index is empty"):
        index.search(_queries(2), 1)
    index.add(_queries(3), _rows("p", 3))
    index.remove(skus=["p0", "p1", "p2"])  # HNSW: still 3 vectors in faiss, all tombstoned
    with pytest.raises(ValueError, match="gallery index is empty"):
        index.search(_queries(2), 1)


def test_bad_inputs(backend, tmp_path):
    index = _new(16, backend, tmp=tmp_path)
    with pytest.raises(ValueError, match="L2-normalised: row 0"):
        index.add(np.ones((1, 16), np.float32), _rows("p", 1))
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        index.add(_queries(1), [{"sku": "a", "colour": "red"}])
    with pytest.raises(ValueError, match="'sku' is required"):
        index.add(_queries(1), [{"name": "a"}])
    with pytest.raises(ValueError, match="2 embeddings but 1 metadata rows"):
        index.add(_queries(2), _rows("p", 1))
    assert len(index) == 0


def test_bad_faiss_factories():
    with pytest.raises(ValueError, match="cannot train faiss index 'IVF64,Flat' on 10 vectors"):
        GalleryIndex(16, FP, factory="IVF64,Flat").add(_queries(10), _rows("p", 10))
    with pytest.raises(ValueError, match="invalid faiss factory string"):
        GalleryIndex(16, FP, factory="NotAnIndex42")


# ----------------------------------------------------------------------------- persistence
def test_metadata_and_threshold_round_trip(tmp_path):
    index = GalleryIndex(16, FP, factory="HNSW32", threshold=0.5)
    rows = [
        {"sku": "4006381333931", "name": "Stabilo Boss – gelb", "category": "office", "price": 1.99,
         "image_path": "shelf/a.jpg", "extra": {"ean": ["4006381333931"], "facings": 3, "nested": {"ok": True}}},
        {"sku": "x", "image_path": "b.png"},
    ]
    index.add(_queries(2), rows)
    index.remove(skus=["x"])  # leaves a tombstone in HNSW, which must round-trip too
    index.save(tmp_path / "g")
    loaded = GalleryIndex.load(tmp_path / "g", fingerprint=FP, dim=16)
    assert loaded.metadata(0) == {"id": 0, **rows[0]} == index.metadata(0)
    assert loaded.threshold == 0.5 and loaded.fingerprint == FP and loaded.dim == 16
    assert loaded.factory == "HNSW32" and loaded.num_tombstones == 1 and len(loaded) == 1
    hit = loaded.search(_queries(2)[:1], 2)
    assert hit.metadata[0][0]["name"] == "Stabilo Boss – gelb" and hit.ids[0, 1] == -1
    new_id = loaded.add(_queries(3)[2:], _rows("q", 1))
    assert new_id.tolist() == [2]  # ids are never reused after a reload


def test_threshold_rejects_open_set_queries(backend, tmp_path):
    # Known products in the gallery; validation picks the threshold from genuine/impostor top-1 scores.
    x, labels, centres = clustered(200, 16, 20, 0.5, seed=3)
    known, unknown = centres[:10], centres[10:]
    keep = labels < 10
    index = _new(16, backend, tmp=tmp_path)
    index.add(x[keep], [{"sku": f"sku{lab}", "image_path": str(i)} for i, lab in enumerate(labels[keep])])
    val_known, _, _ = clustered(100, 16, 10, 0.5, seed=4, centres=known)
    val_unknown, _, _ = clustered(100, 16, 10, 0.5, seed=5, centres=unknown)
    genuine = index.search(val_known, 1).scores[:, 0]
    impostor = index.search(val_unknown, 1).scores[:, 0]
    index.set_threshold(threshold_for_far(genuine, impostor, 0.05))
    assert index.search(val_unknown, 1).accepted.mean() <= 0.05
    test_unknown, _, _ = clustered(100, 16, 10, 0.5, seed=6, centres=unknown)
    test_known, _, _ = clustered(100, 16, 10, 0.5, seed=7, centres=known)
    assert index.search(test_unknown, 1).accepted.mean() <= 0.15
    assert index.search(test_known, 1).accepted.mean() >= 0.8


def test_save_crash_in_process_keeps_previous_version(tmp_path, monkeypatch):
    index, _ = _gallery("Flat", n=100)
    root = tmp_path / "g"
    index.save(root)
    before = index.search(_queries(), 5)
    listing = sorted(p.name for p in root.iterdir())
    index.add(_queries(5, seed=7), _rows("new", 5))
    calls = []

    def failing_save_npy(path, arr):
        calls.append(path)
        if len(calls) == 2:  # vectors.npy written, ids.npy fails
            raise OSError("No space left on device")
        np.save(path, arr)

    monkeypatch.setattr(gallery_store, "_save_npy", failing_save_npy)
    with pytest.raises(OSError, match="No space left"):
        index.save(root)
    assert sorted(p.name for p in root.iterdir()) == listing  # temp directory cleaned up
    _same(GalleryIndex.load(root).search(_queries(), 5), before)


KILL_SCRIPT = r"""
import importlib, sys, time
import numpy as np
from src.retrieval.index import GalleryIndex

root, module, func, pause_at = sys.argv[1], importlib.import_module(sys.argv[2]), sys.argv[3], int(sys.argv[4])
index = GalleryIndex.load(root)
x = np.random.default_rng(1).normal(size=(50, index.dim))
index.add((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), [{"sku": f"n{i}"} for i in range(50)])
real, calls = getattr(module, func), []

def paused(*args):
    real(*args)
    calls.append(1)
    if len(calls) == pause_at:
        print("PAUSED", flush=True)
        time.sleep(120)

setattr(module, func, paused)
index.save(root)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "module, func, pause_at, survives",
    [
        ("src.retrieval.gallery_store", "_save_npy", 1, True),  # killed between vectors.npy and ids.npy
        ("src.utils.io", "fsync_dir", 1, True),  # temp directory complete, not yet renamed
        ("src.utils.io", "fsync_dir", 2, True),  # renamed to v-..., CURRENT not yet swapped
        ("src.utils.io", "fsync_dir", 3, False),  # after the swap: the new version is live (the harness can tell)
    ],
)
def test_save_killed_midway_leaves_old_index_loadable(tmp_path, module, func, pause_at, survives):
    index, _ = _gallery("Flat", n=100)
    root = tmp_path / "g"
    index.save(root)
    before = index.search(_queries(), 5)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(root), module, func, str(pause_at)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "PAUSED", proc.stderr.read() if proc.poll() is not None else line
    finally:
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.communicate()
    loaded = GalleryIndex.load(root)
    assert len(loaded) == (100 if survives else 150)
    if survives:
        _same(loaded.search(_queries(), 5), before)
    # The next save removes whatever the killed one left behind.
    loaded.save(root)
    names = sorted(p.name for p in root.iterdir())
    assert names[0] == "CURRENT" and len(names) == 3 and all(n.startswith("v-") for n in names[1:])


def test_load_rejects_truncated_files_and_foreign_directories(tmp_path):
    index, _ = _gallery("Flat", n=20)
    version = index.save(tmp_path / "g")
    with open(version / "vectors.npy", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="vectors.npy: size 100"):
        GalleryIndex.load(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="CURRENT"):
        GalleryIndex.load(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to write"):
        index.save(tmp_path / "other")


# ----------------------------------------------------------------------------- threads
def test_concurrent_searches_while_adding_and_removing_see_consistent_state(backend, tmp_path):
    dim = 16
    index, x = _gallery(backend, n=200, dim=dim, tmp=tmp_path)
    batches = [l2_normalize(np.random.default_rng(100 + b).normal(size=(20, dim))) for b in range(15)]
    vector_of = {f"p{i}": x[i] for i in range(len(x))}
    for b, batch in enumerate(batches):
        vector_of.update({f"b{b}_{i}": v for i, v in enumerate(batch)})
    q = _queries(30, dim)
    errors, done = [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                res = index.search(q, 8)
                for qi in range(len(q)):
                    for j in range(8):
                        meta = res.metadata[qi][j]
                        assert meta is not None and res.ids[qi, j] == meta["id"]
                        assert abs(res.scores[qi, j] - q[qi] @ vector_of[meta["sku"]]) < 1e-5
        except Exception as err:  # surfaced in the main thread
            errors.append(err)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for b, batch in enumerate(batches):
        index.add(batch, [{"sku": f"b{b}_{i}"} for i in range(len(batch))])
        if b % 3 == 2:
            index.remove(skus=[f"b{b - 1}_{i}" for i in range(10)])
    done.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert len(index) == 200 + 15 * 20 - 5 * 10
