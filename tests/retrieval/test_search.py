import faiss
import numpy as np
import pytest
import torch

from src.retrieval.search import knn_search, l2_normalize

from .conftest import clustered

pytestmark = pytest.mark.numeric  # float results: re-run on one thread in CI


def _assert_same_ranking(sim: np.ndarray, scores, indices, ref_scores):
    """Our neighbours have the reference scores rank by rank (ties may be ordered either way)."""
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(sim, indices, axis=1), ref_scores, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in indices.tolist())  # no neighbour twice


def test_faiss_equals_torch_topk(rng):
    q = l2_normalize(rng.normal(size=(120, 32)))
    g = l2_normalize(rng.normal(size=(400, 32)))
    scores, indices = knn_search(q, g, 10)
    sim = torch.from_numpy(q) @ torch.from_numpy(g).T  # independent oracle: full matrix + topk
    ref_scores, ref_indices = torch.topk(sim, 10, dim=1)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (120, 10)
    _assert_same_ranking(sim.numpy(), scores, indices, ref_scores.numpy())
    # Random floats have no near-ties at this size, so the indices agree exactly.
    np.testing.assert_array_equal(indices, ref_indices.numpy())


def test_chunked_equals_unchunked(rng):
    q = l2_normalize(rng.normal(size=(200, 16)))
    g = l2_normalize(rng.normal(size=(300, 16)))
    full_s, full_i = knn_search(q, g, 5, chunk_size=4096)
    s40, i40 = knn_search(q, g, 5, chunk_size=40)  # >= 20 queries: same BLAS path as one big call
    np.testing.assert_array_equal(i40, full_i)
    # Same ranking; scores may differ in the last float32 bits where BLAS blocks another way (CPU, threads).
    np.testing.assert_allclose(s40, full_s, rtol=0, atol=1e-6)
    s7, i7 = knn_search(q, g, 5, chunk_size=7)  # < 20 queries: faiss' SIMD path, last-bit differences
    _assert_same_ranking(q @ g.T, s7, i7, full_s)


def test_self_matches_removed_equals_masked_brute_force(rng):
    x, _, _ = clustered(150, 16, 10, 0.5, seed=1)
    ids = np.arange(len(x))
    scores, indices = knn_search(x, x, 6, query_ids=ids, gallery_ids=ids, chunk_size=64)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    ref_scores, _ = torch.topk(torch.from_numpy(sim), 6, dim=1)
    assert not (indices == ids[:, None]).any()
    _assert_same_ranking(sim, scores, indices, ref_scores.numpy())


def test_self_match_removal_with_repeated_ids_and_string_ids():
    # Gallery rows 0 and 1 are the same image ("a") stored twice: both must go for query "a".
    g = l2_normalize(np.array([[1, 0], [1, 0.01], [0.9, 0.3], [0, 1]], dtype=np.float32))
    q = g[:1]
    scores, indices = knn_search(q, g, 2, query_ids=["a"], gallery_ids=["a", "a", "b", "c"])
    assert indices.tolist() == [[2, 3]]
    assert scores[0, 0] == pytest.approx(float(g[0] @ g[2]), abs=1e-6)


def test_padding_when_fewer_results_than_k():
    g = np.eye(3, dtype=np.float32)
    scores, indices = knn_search(g[:1], g, 5)
    assert indices[0, 0] == 0 and sorted(indices[0, 1:3].tolist()) == [1, 2]  # 1 and 2 tie at 0
    assert indices[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()
    # With self-removal only two real neighbours exist for k=3.
    scores, indices = knn_search(g, g, 3, query_ids=[0, 1, 2], gallery_ids=[0, 1, 2])
    assert (indices[:, 2] == -1).all() and np.isneginf(scores[:, 2]).all()
    assert sorted(indices[0, :2].tolist()) == [1, 2]


def test_approximate_factory_string_and_prebuilt_index(rng):
    x, _, _ = clustered(400, 16, 20, 0.3, seed=2)
    exact_s, exact_i = knn_search(x[:50], x, 1)
    _, hnsw_i = knn_search(x[:50], x, 1, index="HNSW32")
    assert (hnsw_i == exact_i).mean() >= 0.9  # HNSW on 400 points is essentially exact
    prebuilt = faiss.IndexFlatIP(16)
    prebuilt.add(x)
    s, i = knn_search(x[:50], None, 1, index=prebuilt)
    np.testing.assert_array_equal(i, exact_i)
    empty = faiss.IndexFlatIP(16)
    _, i2 = knn_search(x[:50], x, 1, index=empty)  # an empty index gets the gallery added
    np.testing.assert_array_equal(i2, exact_i)


def test_errors_are_clear(rng):
    q = l2_normalize(rng.normal(size=(3, 8)))
    g = l2_normalize(rng.normal(size=(5, 16)))
    with pytest.raises(ValueError, match="queries have dim 8, gallery has dim 16"):
        knn_search(q, g, 2)
    with pytest.raises(ValueError, match="gallery is empty"):
        knn_search(q, np.zeros((0, 8), np.float32), 2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_search(q, q, 0)
    with pytest.raises(ValueError, match="NaN"):
        knn_search(np.full((1, 8), np.nan), q, 1)
    with pytest.raises(ValueError, match="METRIC_INNER_PRODUCT"):
        knn_search(q, q, 1, index=faiss.IndexFlatL2(8))
    with pytest.raises(ValueError, match="both query_ids and gallery_ids"):
        knn_search(q, q, 1, query_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="cannot train"):
        knn_search(q, q, 1, index="IVF64,Flat")  # 3 vectors cannot train 64 lists
