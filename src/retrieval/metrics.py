"""Retrieval metrics over k-NN search output: pure numpy functions.

Notation for one query ``q`` with label ``y_q``: the search returns gallery rows ``g_1 .. g_K`` (best
first, ``-1`` = no result); ``rel_i = 1`` if ``g_i != -1`` and ``label(g_i) == y_q``; ``R`` = number of
gallery items with label ``y_q`` (minus the query itself when self-matches were removed);
``P(i) = (1/i) * sum_{j<=i} rel_j``.

* ``recall@k`` (CMC top-k accuracy): ``1[sum_{i<=k} rel_i > 0]``.
* ``precision@k``: ``(1/k) * sum_{i<=k} rel_i`` (at most ``R/k`` when ``R < k``).
* ``map@k``: ``AP@k = (1/min(k, R)) * sum_{i<=k} P(i) rel_i`` (the ``apk`` of ml_metrics / Kaggle).
* ``map@r`` (Musgrave et al., "A Metric Learning Reality Check", 2020):
  ``AP@R = (1/R) * sum_{i<=R} P(i) rel_i``.
* ``r_precision``: ``(1/R) * sum_{i<=R} rel_i``.

Every metric is the plain mean over queries (micro average). Queries with ``R == 0`` (their label is
not in the gallery): they count as misses (0) in ``recall@k`` and ``precision@k`` and are excluded
from ``map@k``, ``map@r`` and ``r_precision``, whose ``1/R`` is undefined for them (NaN if every query
has ``R == 0``). pytorch-metric-learning's ``AccuracyCalculator`` excludes them from everything, so
its ``precision_at_1`` equals our ``recall@1`` times ``n_queries / n_queries_with_R>0``.

If fewer than ``R`` neighbours were searched (``K < R``, e.g. ``R`` capped by ``max_r``), the ranks not
searched count as misses, so ``map@r`` and ``r_precision`` are lower bounds of the exact values.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .search import knn_search

__all__ = ["evaluate_retrieval", "num_relevant_from_labels", "retrieval_metrics"]

_ROWS_PER_CHUNK = 4096  # bounds the [rows, K] float64 temporaries when K is large (max_r = 1000)


def _as_labels(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _lookup_counts(keys_gallery: np.ndarray, keys_query: np.ndarray) -> np.ndarray:
    """For each query key, how many gallery entries have that key (0 if none)."""
    if len(keys_gallery) == 0:
        return np.zeros(len(keys_query), dtype=np.int64)
    uniq, counts = np.unique(keys_gallery, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, keys_query), 0, len(uniq) - 1)
    return np.where(uniq[pos] == keys_query, counts[pos], 0).astype(np.int64)


def num_relevant_from_labels(
    query_labels: Sequence | np.ndarray,
    gallery_labels: Sequence | np.ndarray,
    *,
    query_ids: Sequence | np.ndarray | None = None,
    gallery_ids: Sequence | np.ndarray | None = None,
) -> np.ndarray:
    """``R`` per query: gallery items sharing the query's label (bincount over label codes).

    With ``query_ids``/``gallery_ids`` (self-matches removed), gallery items with the query's own id
    and label are not counted.

    >>> num_relevant_from_labels([0, 1, 7], [0, 0, 1, 2]).tolist()
    [2, 1, 0]
    >>> num_relevant_from_labels([0, 0], [0, 0, 1], query_ids=[10, 11], gallery_ids=[10, 11, 12]).tolist()
    [1, 1]
    """
    q = _as_labels(query_labels, "query_labels")
    g = _as_labels(gallery_labels, "gallery_labels")
    if len(q) == 0:
        return np.zeros(0, dtype=np.int64)
    # Encode labels jointly so any label type (int, str) becomes a bincount-able code.
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.reshape(-1)
    q_code, g_code = codes[: len(q)], codes[len(q):]
    r = np.bincount(g_code, minlength=int(codes.max()) + 1)[q_code].astype(np.int64)
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("pass both query_ids and gallery_ids or neither")
    if query_ids is not None:
        qi, gi = np.asarray(query_ids), np.asarray(gallery_ids)
        if len(qi) != len(q) or len(gi) != len(g):
            raise ValueError(
                f"ids and labels differ in length: {len(qi)} query ids / {len(q)} labels, "
                f"{len(gi)} gallery ids / {len(g)} labels"
            )
        _, id_codes = np.unique(np.concatenate([qi, gi]), return_inverse=True)
        id_codes = id_codes.reshape(-1).astype(np.int64)
        n_labels = int(codes.max()) + 1
        # (id, label) pair as one integer key: the same item appearing as query and in the gallery.
        q_key = id_codes[: len(q)] * n_labels + q_code
        g_key = id_codes[len(q):] * n_labels + g_code
        r = r - _lookup_counts(g_key, q_key)
    return r


def _per_query(hits: np.ndarray, r: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-query metric values for one block of rows (NaN where a metric excludes the query)."""
    n, big_k = hits.shape
    ranks = np.arange(1, big_k + 1, dtype=np.float64)
    cum = np.cumsum(hits, axis=1, dtype=np.float64)
    prec_hits = np.where(hits, cum / ranks, 0.0)  # P(i) * rel_i
    has_rel = r > 0
    safe_r = np.maximum(r, 1).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = (cum[:, k - 1] > 0).astype(np.float64)
        out[f"precision@{k}"] = cum[:, k - 1] / k
        ap_k = prec_hits[:, :k].sum(axis=1) / np.minimum(k, safe_r)
        out[f"map@{k}"] = np.where(has_rel, ap_k, np.nan)
    within_r = ranks[None, :] <= r[:, None]
    out["map@r"] = np.where(has_rel, (prec_hits * within_r).sum(axis=1) / safe_r, np.nan)
    out["r_precision"] = np.where(has_rel, (hits * within_r).sum(axis=1) / safe_r, np.nan)
    return out


def retrieval_metrics(
    query_labels: Sequence | np.ndarray,
    gallery_labels: Sequence | np.ndarray,
    topk_indices: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    num_relevant: Sequence[int] | np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics from search output (see the module docstring for the maths and the ``R == 0`` rule).

    Args:
        query_labels: ``[nq]`` labels of the queries.
        gallery_labels: ``[ng]`` labels of the gallery rows.
        topk_indices: ``int [nq, K]`` gallery rows best first, ``-1`` for no result; ``K >= max(ks)``.
        ks: cut-offs for ``recall@k``, ``precision@k``, ``map@k``.
        num_relevant: ``R`` per query; default ``num_relevant_from_labels(query_labels, gallery_labels)``.
            Pass it (with ids) when self-matches were removed.

    Returns:
        ``{"recall@k", "precision@k", "map@k" for k in ks, "map@r", "r_precision"}`` as floats.

    Example (query 0 has R=2, hits at ranks 1 and 3; query 1 has R=1, hit at rank 3):

    >>> m = retrieval_metrics([0, 1], [0, 0, 1, 2], np.array([[1, 2, 0], [0, 3, 2]]), ks=(1, 3))
    >>> {key: round(v, 4) for key, v in m.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'recall@1': 0.5, 'precision@1': 0.5, 'map@1': 0.5, 'recall@3': 1.0, 'precision@3': 0.5,
     'map@3': 0.5833, 'map@r': 0.25, 'r_precision': 0.25}
    """
    q = _as_labels(query_labels, "query_labels")
    g = _as_labels(gallery_labels, "gallery_labels")
    idx = np.asarray(topk_indices)
    if idx.ndim != 2 or idx.shape[0] != len(q):
        raise ValueError(f"topk_indices must be [n_queries={len(q)}, K], got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"topk_indices must be integers, got dtype {idx.dtype}")
    if len(q) == 0:
        raise ValueError("no queries: metrics are undefined")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if max(ks) > idx.shape[1]:
        raise ValueError(f"max(ks)={max(ks)} exceeds the {idx.shape[1]} searched neighbours per query")
    if idx.size and (idx.min() < -1 or idx.max() >= len(g)):
        raise ValueError(f"topk_indices must lie in [-1, {len(g)}), got range [{idx.min()}, {idx.max()}]")
    if num_relevant is None:
        r = num_relevant_from_labels(q, g)
    else:
        r = np.asarray(num_relevant, dtype=np.int64)
        if r.shape != (len(q),):
            raise ValueError(f"num_relevant must have shape ({len(q)},), got {r.shape}")

    per_query: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(q), _ROWS_PER_CHUNK):
        rows = slice(start, start + _ROWS_PER_CHUNK)
        block = idx[rows]
        valid = block >= 0
        hits = valid & (g[np.where(valid, block, 0)] == q[rows, None]) if len(g) else valid
        for name, values in _per_query(hits, r[rows], ks).items():
            per_query.setdefault(name, []).append(values)

    result = {}
    for name, chunks in per_query.items():
        values = np.concatenate(chunks)
        kept = values[~np.isnan(values)]
        result[name] = float(kept.mean()) if len(kept) else float("nan")
    return result


def evaluate_retrieval(
    query_emb: np.ndarray,
    query_labels: Sequence | np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: Sequence | np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
    index=None,
    query_ids: Sequence | np.ndarray | None = None,
    gallery_ids: Sequence | np.ndarray | None = None,
    max_r: int = 1000,
) -> dict[str, float]:
    """Search and score in one call.

    Searches ``K = max(max(ks), min(max R, max_r))`` neighbours, so ``map@r`` is exact whenever every
    ``R <= max_r`` (a lower bound otherwise). Pass ``query_ids = gallery_ids`` (e.g. ``np.arange(n)``)
    with ``query_emb is gallery_emb`` for leave-one-out evaluation: self-matches are removed and ``R``
    excludes the query itself.

    >>> e = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    >>> e /= np.linalg.norm(e, axis=1, keepdims=True)
    >>> ids = np.arange(4)
    >>> evaluate_retrieval(e, [0, 0, 1, 1], e, [0, 0, 1, 1], ks=(1,), query_ids=ids, gallery_ids=ids)
    {'recall@1': 1.0, 'precision@1': 1.0, 'map@1': 1.0, 'map@r': 1.0, 'r_precision': 1.0}
    """
    if max_r < 1:
        raise ValueError(f"max_r must be >= 1, got {max_r}")
    r = num_relevant_from_labels(query_labels, gallery_labels, query_ids=query_ids, gallery_ids=gallery_ids)
    k = max(max(ks), min(int(r.max(initial=0)), max_r))
    _, indices = knn_search(
        query_emb, gallery_emb, k, chunk_size=chunk_size, index=index, query_ids=query_ids, gallery_ids=gallery_ids
    )
    return retrieval_metrics(query_labels, gallery_labels, indices, ks=ks, num_relevant=r)
