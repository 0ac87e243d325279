"""Open-set threshold and look-alike margin of a gallery, calibrated on validation images.

* Open-set threshold for a target false-accept rate on validation queries: a query's *genuine* score is its
  best similarity to a gallery image of its own SKU; its *impostor* score is its best similarity to any
  other SKU, i.e. what it would score if its SKU were held out of the gallery (each SKU held out in turn).
  The threshold is stored in the index, so every later search applies it.
* Look-alike margin for a target share of wrong matches left priced (:func:`choose_margin`): among validation
  queries of SKUs in the gallery whose best match passes the threshold, a *wrong* match is one whose best SKU
  is not the query's. The margin of a match is its score minus the best score of any *other SKU* (the
  runner-up product, usually the look-alike sibling: two variants of one family). A match whose margin is
  below the calibrated one is listed as *uncertain* by RecognitionPipeline, never priced. Stored with the
  gallery like the threshold; the calibration is an audit row (action ``margin``, SKU ``*``, old/new value in
  the price columns), as is a threshold calibration (action ``threshold``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from src.retrieval.index_base import GalleryBase
from src.retrieval.threshold import far_frr, threshold_for_far

__all__ = ["MarginReport", "ThresholdReport", "choose_margin", "choose_threshold", "match_margins", "open_set_scores"]


# ---------------------------------------------------------------------------------------------- threshold
@dataclass
class ThresholdReport:
    threshold: float
    target_far: float
    far: float  # on the validation impostor scores
    frr: float  # on the validation genuine scores
    n_genuine: int
    n_impostor: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_set_scores(gallery_vectors: np.ndarray, gallery_skus: Sequence[str], query_vectors: np.ndarray,
                    query_skus: Sequence[str], chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``(genuine, impostor)`` float32 scores: per query, the best cosine to its own SKU's gallery images (if
    any) and the best cosine to any other SKU (its top-1 were its SKU held out of the gallery)."""
    g = np.asarray(gallery_vectors, np.float32)
    q = np.asarray(query_vectors, np.float32)
    if len(g) != len(gallery_skus) or len(q) != len(query_skus):
        raise ValueError("one SKU per gallery vector and per query vector expected")
    codes = {s: i for i, s in enumerate(sorted({str(s) for s in gallery_skus} | {str(s) for s in query_skus}))}
    g_code = np.array([codes[str(s)] for s in gallery_skus])
    q_code = np.array([codes[str(s)] for s in query_skus])
    genuine, impostor = [], []
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ g.T
        same = q_code[start:start + chunk, None] == g_code[None, :]
        best_same = np.where(same, sims, -np.inf).max(axis=1) if len(g) else np.full(len(sims), -np.inf)
        best_other = np.where(~same, sims, -np.inf).max(axis=1) if len(g) else np.full(len(sims), -np.inf)
        genuine.append(best_same[np.isfinite(best_same)])
        impostor.append(best_other[np.isfinite(best_other)])
    cat = lambda xs: np.concatenate(xs).astype(np.float32) if xs else np.zeros(0, np.float32)  # noqa: E731
    return cat(genuine), cat(impostor)


def choose_threshold(index: GalleryBase, query_vectors: np.ndarray, query_skus: Sequence[str],
                     target_far: float) -> ThresholdReport:
    """Lowest threshold whose false-accept rate on the held-out-SKU (impostor) scores is <= target_far."""
    ids, vectors = index.vectors()
    skus = [index.metadata(int(i))["sku"] for i in ids]
    genuine, impostor = open_set_scores(vectors, skus, query_vectors, query_skus)
    if len(impostor) == 0:
        raise ValueError("no impostor scores: the gallery needs at least two SKUs to calibrate a threshold")
    t = threshold_for_far(genuine, impostor, target_far)
    far, frr = far_frr(genuine, impostor, t)
    return ThresholdReport(float(t), float(target_far), far, frr, int(len(genuine)), int(len(impostor)))


# ---------------------------------------------------------------------------------------------- margin
@dataclass
class MarginReport:
    margin: float
    target_wrong: float  # allowed share of the wrong matches above the threshold that stay priced
    wrong_priced: float  # on validation: share of the wrong matches above the threshold still priced
    right_uncertain: float  # on validation: share of the right matches above the threshold made uncertain
    n_right: int
    n_wrong: int
    threshold: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def match_margins(gallery_vectors: np.ndarray, gallery_skus: Sequence[str], query_vectors: np.ndarray,
                  query_skus: Sequence[str], threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(right, wrong)`` float32 margins of the queries whose SKU is in the gallery and whose best score passes
    ``threshold``: margin = best score - best score of another SKU than the best one; *right* when the best SKU
    is the query's. Queries of SKUs absent from the gallery are the threshold's business and are skipped."""
    g = np.asarray(gallery_vectors, np.float32)
    q = np.asarray(query_vectors, np.float32)
    if len(g) != len(gallery_skus) or len(q) != len(query_skus):
        raise ValueError("one SKU per gallery vector and per query vector expected")
    names = sorted({str(s) for s in gallery_skus})
    if len(names) < 2:
        raise ValueError("a margin needs at least two SKUs in the gallery")
    code = {s: i for i, s in enumerate(names)}
    g_code = np.array([code[str(s)] for s in gallery_skus])
    keep = np.array([str(s) in code for s in query_skus], bool)
    q, q_code = q[keep], np.array([code[str(s)] for s, k in zip(query_skus, keep) if k], np.int64)
    sims = q @ g.T  # [nq, ng]
    per_sku = np.full((len(q), len(names)), -np.inf, np.float32)
    for c in range(len(names)):
        per_sku[:, c] = sims[:, g_code == c].max(axis=1)
    order = np.argsort(-per_sku, axis=1, kind="stable")
    rows = np.arange(len(q))
    best, second = per_sku[rows, order[:, 0]], per_sku[rows, order[:, 1]]
    margin = (best - second).astype(np.float32)
    passed = np.ones(len(q), bool) if threshold is None else best.astype(np.float64) >= threshold
    right = order[:, 0] == q_code
    return margin[passed & right], margin[passed & ~right]


def choose_margin(index: GalleryBase, query_vectors: np.ndarray, query_skus: Sequence[str],
                  target_wrong: float) -> MarginReport:
    """Lowest margin at which at most ``target_wrong`` of the validation's wrong matches above the index's
    threshold stay priced (:func:`threshold_for_far` on margins: wrong matches play the impostors). No wrong
    match on validation: margin 0 (nothing is made uncertain)."""
    ids, vectors = index.vectors()
    skus = [index.metadata(int(i))["sku"] for i in ids]
    right, wrong = match_margins(vectors, skus, query_vectors, query_skus, index.threshold)
    margin = 0.0 if len(wrong) == 0 else max(0.0, threshold_for_far(right, wrong, target_wrong))
    wrong_priced, right_uncertain = far_frr(right, wrong, margin)
    return MarginReport(float(margin), float(target_wrong), wrong_priced, right_uncertain, int(len(right)),
                        int(len(wrong)), index.threshold)
