"""Small synthetic embeddings for the retrieval tests (seeded, a few thousand vectors at most)."""

from __future__ import annotations

import numpy as np
import pytest

from src.retrieval.search import l2_normalize


def clustered(n: int, dim: int, n_clusters: int, noise: float, seed: int, centres: np.ndarray | None = None):
    """``n`` unit vectors around ``n_clusters`` random unit centres; returns (vectors, cluster labels, centres)."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = l2_normalize(rng.normal(size=(n_clusters, dim)))
    labels = rng.integers(0, len(centres), size=n)
    x = centres[labels] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return l2_normalize(x), labels, centres


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="package", autouse=True)
def _faiss_single_thread():
    """faiss' OpenMP threads spin against other jobs on the 2 shared cores (3-7x slower measured here);
    one thread is faster and makes HNSW construction deterministic. Restored afterwards."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)
