"""Chunked k-nearest-neighbour search by inner product (cosine on L2-normalised embeddings).

Only numpy and faiss: no Lightning, no Hydra.

Conventions shared by the whole package:

* embeddings are ``float32`` arrays ``[n, d]``, L2-normalised by the caller, so the inner product is
  the cosine similarity and a larger score is a better match;
* results are ``scores[nq, k]`` (``float32``, best first) and ``indices[nq, k]`` (``int64``, rows of the
  gallery); a missing result (gallery smaller than ``k``, or self-matches removed) is index ``-1`` with
  score ``-inf``.
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np

__all__ = ["as_embeddings", "build_index", "drop_and_compact", "knn_search", "l2_normalize", "new_index", "train_index"]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation to ``float32`` (rows of zeros stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a C-contiguous ``float32`` ``[n, d]`` array or raise a ValueError naming ``name``."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [n, d] array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has embedding dim 0 (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def new_index(dim: int, factory: str = "Flat", *, own_ids: bool = False) -> faiss.Index:
    """An empty inner-product faiss index from a factory string ("Flat", "HNSW32", "IVF256,PQ16", ...).

    ``own_ids``: labels will be the caller's int64 ids (``add_with_ids``). IVF stores ids itself; other types
    are wrapped in ``IndexIDMap2`` (not ``IndexIDMap`` around IVF: IVF does not renumber on removal, the map
    assumes it does). A string faiss rejects is a ValueError naming it."""
    metric = faiss.METRIC_INNER_PRODUCT
    try:
        index = faiss.index_factory(dim, factory, metric)
    except RuntimeError as err:
        raise ValueError(f"invalid faiss factory string {factory!r} for dim {dim}: {err}") from err
    if own_ids and not factory.startswith("IDMap") and faiss.try_extract_index_ivf(index) is None:
        index = faiss.index_factory(dim, "IDMap2," + factory, metric)
    return index


def train_index(index: faiss.Index, vectors: np.ndarray, factory: str) -> None:
    """Train ``index`` on ``vectors`` if its type needs it (IVF, PQ); faiss' C++-flavoured refusal becomes a
    ValueError that says what to change."""
    if index.is_trained:
        return
    try:
        index.train(vectors)  # IndexShards.train trains every shard on the same data
    except RuntimeError as err:
        raise ValueError(
            f"cannot train faiss index {factory!r} on {len(vectors)} vectors: {err}. Add more vectors (a gallery "
            "index trains on its first batch), or use fewer IVF lists / PQ centroids or a 'Flat' index."
        ) from err


def build_index(gallery: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """Build an inner-product faiss index from a factory string ("Flat", "HNSW32", "IVF256,PQ16", ...),
    train it on ``gallery`` if the type needs training, and add ``gallery`` (row i gets id i)."""
    gallery = as_embeddings(gallery, "gallery")
    if len(gallery) == 0:
        raise ValueError("gallery is empty: nothing to search")
    index = new_index(gallery.shape[1], factory)
    train_index(index, gallery, factory)
    index.add(gallery)
    return index


def _self_match_budget(query_ids: np.ndarray, gallery_ids: np.ndarray) -> int:
    """Largest number of gallery rows sharing one query's id: how many extra neighbours to fetch."""
    uniq, counts = np.unique(gallery_ids, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, query_ids), 0, len(uniq) - 1)
    present = uniq[pos] == query_ids
    return int(counts[pos][present].max()) if present.any() else 0


def drop_and_compact(scores, indices, drop, k):
    """Remove entries where ``drop`` is True, keep the rest in rank order, cut to ``k`` columns and pad
    with ``-1`` / ``-inf``."""
    # A stable sort of the boolean mask moves dropped entries to the end without reordering the others.
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)
    indices = np.take_along_axis(indices, order, axis=1)
    dropped = np.take_along_axis(drop, order, axis=1)
    indices[dropped] = -1
    scores[dropped] = -np.inf
    return scores, indices


def _drop_self(scores, indices, q_ids, gallery_ids, k):
    """Remove neighbours whose gallery id equals the query id."""
    valid = indices >= 0
    neighbour_ids = gallery_ids[np.where(valid, indices, 0)]
    return drop_and_compact(scores, indices, valid & (neighbour_ids == q_ids[:, None]), k)


def knn_search(
    queries: np.ndarray,
    gallery: np.ndarray | None,
    k: int,
    *,
    chunk_size: int = 4096,
    index: faiss.Index | str | None = None,
    query_ids: Sequence | np.ndarray | None = None,
    gallery_ids: Sequence | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows for each query by inner product, searched ``chunk_size`` queries at a time.

    Args:
        queries: ``[nq, d]`` float32, L2-normalised.
        gallery: ``[ng, d]`` float32, L2-normalised. May be ``None`` when ``index`` is an already
            populated faiss index.
        k: neighbours per query (``k > ng`` pads with ``-1`` / ``-inf``).
        chunk_size: queries per faiss call; memory is ``O(chunk_size * k)``, never ``nq x ng``.
        index: ``None`` -> exact ``"Flat"`` (inner product); a factory string ("HNSW32", "IVF256,PQ16") -> built
            with ``METRIC_INNER_PRODUCT`` and trained on ``gallery``; a faiss index -> used as is if it
            holds vectors, else ``gallery`` is added to it (training it first if needed). Its metric
            must be inner product and its labels must be gallery row numbers.
        query_ids, gallery_ids: when both are given, neighbours with the same id as the query are
            removed (query == gallery evaluation). The search fetches ``k`` plus the largest number of
            gallery rows sharing one id, so ``k`` real neighbours remain whenever they exist.

    Returns:
        ``(scores, indices)``: ``float32 [nq, k]`` best first and ``int64 [nq, k]``; ``-1`` / ``-inf``
        where fewer than ``k`` neighbours exist.

    Example:
        >>> g = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
        >>> s, i = knn_search(g[:2], g, 2, query_ids=[0, 1], gallery_ids=[0, 1, 2])
        >>> i.tolist(), s.astype(float).round(2).tolist()
        ([[1, 2], [0, 2]], [[0.8, 0.0], [0.8, 0.6]])
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    queries = as_embeddings(queries, "queries")
    if gallery is not None:
        gallery = as_embeddings(gallery, "gallery")
        if queries.shape[1] != gallery.shape[1]:
            raise ValueError(
                f"embedding dims differ: queries have dim {queries.shape[1]}, gallery has dim {gallery.shape[1]}"
            )

    if index is None or isinstance(index, str):
        if gallery is None or len(gallery) == 0:
            raise ValueError("gallery is empty: nothing to search")
        index = build_index(gallery, "Flat" if index is None else index)
    else:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"index metric must be METRIC_INNER_PRODUCT, got metric_type={index.metric_type}")
        if index.d != queries.shape[1]:
            raise ValueError(f"embedding dims differ: queries have dim {queries.shape[1]}, index has dim {index.d}")
        if index.ntotal == 0:
            if gallery is None or len(gallery) == 0:
                raise ValueError("gallery is empty: the given index holds no vectors and no gallery was passed")
            if not index.is_trained:
                index.train(gallery)
            index.add(gallery)
    ng = index.ntotal

    extra = 0
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("pass both query_ids and gallery_ids (self-match removal) or neither")
    if query_ids is not None:
        q_ids, g_ids = np.asarray(query_ids), np.asarray(gallery_ids)
        if len(q_ids) != len(queries):
            raise ValueError(f"query_ids has {len(q_ids)} entries but there are {len(queries)} queries")
        if len(g_ids) != ng:
            raise ValueError(f"gallery_ids has {len(g_ids)} entries but the gallery has {ng} vectors")
        extra = _self_match_budget(q_ids, g_ids)

    nq = len(queries)
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_indices = np.empty((nq, k), dtype=np.int64)
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        scores, indices = index.search(queries[start:stop], k + extra)
        indices = indices.astype(np.int64, copy=False)
        scores[indices < 0] = -np.inf  # faiss pads with -FLT_MAX; -inf is unambiguous
        if extra:
            scores, indices = _drop_self(scores, indices, q_ids[start:stop], g_ids, k)
        out_scores[start:stop] = scores[:, :k]
        out_indices[start:stop] = indices[:, :k]
    return out_scores, out_indices
