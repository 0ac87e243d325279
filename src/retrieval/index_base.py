"""What both gallery backends share: the product row, the search result, and the checks around them.

:class:`~src.retrieval.index.GalleryIndex` (faiss, a directory on disk) and
:class:`~src.retrieval.milvus_index.MilvusGalleryIndex` (a Milvus collection) are one interface:
:class:`GalleryBase` holds the identity (embedding ``dim`` and model ``fingerprint``), the open-set
``threshold``, the input checks, the id assignment of ``add`` and the :class:`SearchResult` building; each
backend stores and searches its own way.

Only numpy and the standard library.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .search import as_embeddings

__all__ = ["METADATA_FIELDS", "GalleryBase", "IncompatibleIndexError", "SearchResult", "check_match"]

METADATA_FIELDS = ("sku", "name", "category", "price", "image_path", "extra")
UPDATABLE_FIELDS = ("name", "category", "price")
_NORM_TOLERANCE = 1e-3  # scores and thresholds assume cosine similarity


class IncompatibleIndexError(ValueError):
    """The index was built for another embedding model/preprocessing (fingerprint) or dimension."""


@dataclass
class SearchResult:
    """``ids``/``scores``: ``[nq, k]`` best first (``-1``/``-inf`` = no result). ``accepted``: valid and
    ``score >= threshold`` (all valid results when no threshold is set). ``metadata[q][j]``: the product
    row of ``ids[q, j]`` (a dict with ``id`` and :data:`METADATA_FIELDS`) or ``None``."""

    ids: np.ndarray
    scores: np.ndarray
    accepted: np.ndarray
    metadata: list[list[dict[str, Any] | None]]


def check_match(stored_fp: str, stored_dim: int, fingerprint: str | None, dim: int | None, *,
                where: str = "") -> None:
    """IncompatibleIndexError naming both values if ``fingerprint`` or ``dim`` differ from the stored ones
    (prefixed by ``where``, e.g. the collection, when given)."""
    prefix = f"{where}: " if where else ""
    if fingerprint is not None and fingerprint != stored_fp:
        raise IncompatibleIndexError(
            f"{prefix}embedding fingerprint mismatch: index was built with {stored_fp!r}, "
            f"queries come from {fingerprint!r}; rebuild the gallery with the current model"
        )
    if dim is not None and int(dim) != stored_dim:
        raise IncompatibleIndexError(f"{prefix}embedding dim mismatch: index has dim {stored_dim}, got dim {dim}")


def _check_normalized(x: np.ndarray, name: str) -> None:
    norms = np.linalg.norm(x, axis=1)
    bad = np.abs(norms - 1.0) > _NORM_TOLERANCE
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{name} must be L2-normalised: row {row} has norm {norms[row]:.4f}")


def _checked_threshold(threshold: float | None) -> float | None:
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite or None, got {threshold}")
    return None if threshold is None else float(threshold)


def _checked_margin(margin: float | None) -> float | None:
    if margin is not None and (not math.isfinite(margin) or margin < 0):
        raise ValueError(f"margin must be finite and >= 0, or None, got {margin}")
    return None if margin is None else float(margin)


def _clean_row(row: Mapping[str, Any], position: int) -> dict[str, Any]:
    unknown = set(row) - set(METADATA_FIELDS)
    if unknown:
        raise ValueError(f"metadata row {position}: unknown keys {sorted(unknown)}; allowed {METADATA_FIELDS}")
    if not row.get("sku"):
        raise ValueError(f"metadata row {position}: 'sku' is required")
    price = row.get("price")
    extra = row.get("extra") or {}
    try:
        json.dumps(extra)
    except TypeError as err:
        raise ValueError(f"metadata row {position}: 'extra' is not JSON-serialisable: {err}") from err
    return {
        "sku": str(row["sku"]),
        "name": None if row.get("name") is None else str(row["name"]),
        "category": None if row.get("category") is None else str(row["category"]),
        "price": None if price is None else float(price),
        "image_path": "" if row.get("image_path") is None else str(row["image_path"]),
        "extra": extra,
    }


class GalleryBase:
    """Searchable product gallery keyed by int64 ids, with open-set threshold and a fingerprint.

    An entry is one vector with metadata (:data:`METADATA_FIELDS`); it is identified by ``(sku, image_path)``:
    adding an entry whose key already exists keeps the stored one. Ids are ``0, 1, 2, ...`` in order of
    addition and never reused. A backend sets ``_threshold`` and ``_next_id`` and implements ``_search``,
    ``add``, ``remove``, ``update``, ``rebuild``, ``metadata``, ``vectors``, ``ids``, ``num_tombstones``,
    ``__len__`` and ``__contains__``.
    """

    _threshold: float | None
    _margin: float | None = None
    _next_id: int

    def __init__(self, dim: int, fingerprint: str) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
        self._dim = int(dim)
        self._fingerprint = fingerprint
        self._lock = threading.RLock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def threshold(self) -> float | None:
        return self._threshold

    def set_threshold(self, threshold: float | None) -> None:
        """Set the open-set threshold (e.g. from :func:`threshold_for_far` on validation scores); a Milvus
        collection stores it, so every process opening it gets it."""
        threshold = _checked_threshold(threshold)
        with self._lock:
            self._threshold = threshold
            self._threshold_changed()

    @property
    def margin(self) -> float | None:
        """Stored for callers (RecognitionPipeline): a match whose score beats the best other SKU by less than
        this is *uncertain*. Not applied by :meth:`search`."""
        return self._margin

    def set_margin(self, margin: float | None) -> None:
        """Set the look-alike margin (e.g. from ``choose_margin`` on validation scores); kept like the threshold."""
        margin = _checked_margin(margin)
        with self._lock:
            self._margin = margin
            self._threshold_changed()

    def _threshold_changed(self) -> None:
        """Hook: persist the new threshold or margin where the backend keeps them (called under the lock)."""

    # ------------------------------------------------------------------ checks
    def check_compatible(self, fingerprint: str | None = None, dim: int | None = None) -> None:
        """Raise IncompatibleIndexError naming both values if ``fingerprint`` or ``dim`` differ."""
        check_match(self._fingerprint, self._dim, fingerprint, dim)

    def _checked_embeddings(self, x: np.ndarray, name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 2:
            self.check_compatible(dim=x.shape[1])
        x = as_embeddings(x, name)
        _check_normalized(x, name)
        return x

    def _checked_batch(self, embeddings: np.ndarray,
                       metadata_rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The arguments of ``add``, checked: unit ``[n, dim]`` float32 and ``n`` cleaned metadata rows."""
        embeddings = self._checked_embeddings(embeddings, "embeddings")
        if len(metadata_rows) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(metadata_rows)} metadata rows")
        return embeddings, [_clean_row(row, i) for i, row in enumerate(metadata_rows)]

    def _assign_ids(self, keys: Sequence[tuple[str, str]],
                    existing: Mapping[tuple[str, str], int]) -> tuple[np.ndarray, list[int]]:
        """The id of every ``(sku, image_path)`` key: the stored one, the one given to the same key earlier in
        the batch, or the next new id. Returns ``(ids, positions of the new entries)``; the caller stores the
        new entries and moves ``_next_id`` on by their number."""
        out = np.empty(len(keys), dtype=np.int64)
        new: list[int] = []
        batch_keys: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key in existing:
                out[i] = existing[key]
            elif key in batch_keys:
                out[i] = batch_keys[key]
            else:
                out[i] = batch_keys[key] = self._next_id + len(new)
                new.append(i)
        return out, new

    @staticmethod
    def _skus_and_ids(skus: Iterable[str] | None, ids: Iterable[int] | None) -> tuple[set[str], list[int]]:
        """The arguments of ``remove``/``update``: a set of skus (one string is one sku, not its characters)
        and a list of ids."""
        if isinstance(skus, str):
            skus = [skus]
        id_list = [] if ids is None else np.atleast_1d(np.asarray(ids, dtype=np.int64)).tolist()
        return {str(s) for s in (skus or ())}, id_list

    @staticmethod
    def _update_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
        bad = set(fields) - set(UPDATABLE_FIELDS)
        if bad:
            raise ValueError(f"only name, category and price can be updated, not {sorted(bad)}")
        fields = dict(fields)
        if fields.get("price") is not None:
            fields["price"] = float(fields["price"])
        return fields

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, *, fingerprint: str | None = None) -> SearchResult:
        """Top-``k`` entries per query by cosine similarity.

        Args:
            queries: ``[nq, dim]`` float32, L2-normalised.
            k: results per query.
            fingerprint: if given, must equal the index fingerprint (IncompatibleIndexError otherwise).
        """
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        self._check_k(k)
        self.check_compatible(fingerprint=fingerprint)
        return self._search(self._checked_embeddings(queries, "queries"), k)

    def _check_k(self, k: int) -> None:
        """Hook: refuse a ``k`` the backend cannot return."""

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        raise NotImplementedError

    @staticmethod
    def _result(ids: np.ndarray, scores: np.ndarray, metadata: list[list[dict[str, Any] | None]],
                threshold: float | None) -> SearchResult:
        accepted = ids >= 0
        if threshold is not None:
            # float64: a Python float against float32 scores would be compared in float32.
            accepted &= scores.astype(np.float64) >= threshold
        return SearchResult(ids=ids, scores=scores, accepted=accepted, metadata=metadata)
