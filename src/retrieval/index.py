"""A product gallery: a faiss index of embeddings plus product metadata in SQLite, saved atomically.

Only numpy, faiss, sqlite3 and the standard library.

Index types (``factory`` is a faiss index_factory string, always with ``METRIC_INNER_PRODUCT``):

* ``"Flat"`` (exact), ``"HNSW32"``: wrapped in ``IndexIDMap2`` so labels are our int64 ids. Flat can
  remove vectors; HNSW cannot, so removed ids become *tombstones*, filtered out at search time until
  :meth:`GalleryIndex.rebuild` rebuilds the index from the stored vectors.
* ``"IVF{n},Flat"``, ``"IVF{n},PQ{m}"``: IVF stores ids itself (``add_with_ids``, ``remove_ids``), so it
  is not wrapped (``IndexIDMap`` + IVF breaks on removal: IVF does not renumber, the map assumes it
  does). Trained on the first ``add`` (needs at least ``n`` vectors, ``256`` more for PQ codebooks);
  ``rebuild`` retrains on everything stored.
* ``num_shards > 1`` (CPU): a ``faiss.IndexShards`` of ``num_shards`` such indexes, searched in
  parallel threads, each saved to its own file (faiss cannot serialise IndexShards).
* ``use_gpu=True`` with ``faiss.get_num_gpus() > 0``: the CPU index stays the source of truth (adds,
  removals, saves); searches use ``faiss.index_cpu_to_all_gpus`` of it, recloned lazily after a change,
  sharded across the GPUs when ``num_shards > 1`` (replicated otherwise). GPU faiss supports Flat and
  IVF, not HNSW. Needs the faiss-gpu package; this path is untested on the CPU-only CI. Without a GPU
  it warns and stays on the CPU.

Every vector is stored (``vectors.npy``) so ``rebuild`` never re-embeds images. Memory: roughly twice
the vectors for Flat (index + store).

Directory layout written by :meth:`GalleryIndex.save` (``rename`` cannot atomically replace a non-empty
directory, so a pointer file is swapped instead)::

    <dir>/CURRENT                 name of the live version, replaced with os.replace
    <dir>/v-<time>-<uuid>/        manifest.json, index*.faiss, vectors.npy, ids.npy, metadata.sqlite
    <dir>/.tmp-<uuid>/            a save in progress (removed by the next save if a crash left it)
    <dir>/LOCK                    flock target of :func:`directory_lock` (processes sharing the directory)

A save writes and fsyncs a complete version in a temp directory, renames it to ``v-...``, then swaps
``CURRENT``. A crash at any point leaves ``CURRENT`` naming a complete older version.

Audit trail: ``metadata.sqlite`` also holds an append-only ``audit`` table (:data:`AUDIT_FIELDS`). Each save
copies the previous version's rows and appends the ones passed to :meth:`GalleryIndex.save`, so a change and
the rows recording it become visible in the same ``CURRENT`` swap (both or neither). Versions written before
the table existed read as an empty history; their next save creates it.

Several processes (e.g. service workers) may share one directory: writers hold ``directory_lock(dir)``
(exclusive) around load-if-moved -> change -> save, readers reload under the shared lock when
:func:`current_version` no longer names the version they hold (:attr:`GalleryIndex.version`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import faiss
import numpy as np

from .search import as_embeddings, drop_and_compact

__all__ = ["AUDIT_FIELDS", "LOCK_FILE", "METADATA_FIELDS", "GalleryIndex", "IncompatibleIndexError", "SearchResult",
           "current_version", "directory_lock", "read_audit"]

METADATA_FIELDS = ("sku", "name", "category", "price", "image_path", "extra")
# One audit row: UTC ISO time, who (an API key id, never the key), add/remove/price, the SKU, prices, image hash.
AUDIT_FIELDS = ("time", "key_id", "action", "sku", "old_price", "new_price", "image_sha256")
LOCK_FILE = "LOCK"
FORMAT_VERSION = 1
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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes renames/creations inside `path` durable (POSIX); not supported on Windows.
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def current_version(directory: str | os.PathLike) -> str | None:
    """The version name ``<directory>/CURRENT`` points to (None without one): a cheap "did it move?" check."""
    try:
        return (Path(directory) / "CURRENT").read_text().strip() or None
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, *, exclusive: bool = True) -> Iterator[None]:
    """``flock`` on ``<directory>/LOCK``: exclusive for a read-modify-write, shared for a reload. Works across
    processes and across threads (each call opens its own file description). No-op where fcntl is missing."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: one process per directory, as before
        yield
        return
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _audit_row(row: Mapping[str, Any], position: int) -> tuple:
    unknown = set(row) - set(AUDIT_FIELDS)
    missing = {"time", "action", "sku"} - set(row)
    if unknown or missing:
        raise ValueError(f"audit row {position}: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
    price = lambda v: None if v is None else float(v)  # noqa: E731
    text = lambda v: None if v is None else str(v)  # noqa: E731
    return (str(row["time"]), text(row.get("key_id")), str(row["action"]), str(row["sku"]),
            price(row.get("old_price")), price(row.get("new_price")), text(row.get("image_sha256")))


def _has_audit_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone() is not None


def read_audit(directory: str | os.PathLike, *, limit: int = 100, offset: int = 0, sku: str | None = None,
               attempts: int = 5) -> tuple[int, list[dict[str, Any]]]:
    """``(total, rows)`` of the audit trail of the live version, newest first (``seq`` = append order).

    A save in another process may delete the version between reading CURRENT and opening it; that is retried
    (or hold :func:`directory_lock` shared)."""
    root = Path(directory)
    for attempt in range(attempts):
        name = current_version(root)
        if name is None:
            return 0, []
        path = root / name / "metadata.sqlite"
        try:
            if not path.is_file():
                raise FileNotFoundError(path)
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                if not _has_audit_table(conn):
                    return 0, []
                where, args = ("WHERE sku = ?", (sku,)) if sku is not None else ("", ())
                total = conn.execute(f"SELECT COUNT(*) FROM audit {where}", args).fetchone()[0]
                cur = conn.execute(f"SELECT seq, {', '.join(AUDIT_FIELDS)} FROM audit {where} "
                                   "ORDER BY seq DESC LIMIT ? OFFSET ?", (*args, int(limit), int(offset)))
                rows = [dict(zip(("seq", *AUDIT_FIELDS), r)) for r in cur]
            finally:
                conn.close()
            return total, rows
        except (OSError, sqlite3.Error):
            if attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _check_normalized(x: np.ndarray, name: str) -> None:
    norms = np.linalg.norm(x, axis=1)
    bad = np.abs(norms - 1.0) > _NORM_TOLERANCE
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{name} must be L2-normalised: row {row} has norm {norms[row]:.4f}")


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


class GalleryIndex:
    """Searchable product gallery keyed by int64 ids, with open-set threshold and a fingerprint.

    Args:
        dim: embedding size.
        fingerprint: identifies the embedding model and preprocessing (e.g. checkpoint hash + transform
            hash); searches and loads with another fingerprint are refused.
        factory: faiss index_factory string, e.g. ``"Flat"``, ``"HNSW32"``, ``"IVF256,PQ16"``.
        threshold: open-set rejection: results with ``score < threshold`` are not ``accepted``.
        margin: stored with the gallery for callers (RecognitionPipeline): a match whose score beats the best
            other SKU by less than this is *uncertain*. Not applied by :meth:`search`.
        num_shards: ``> 1`` splits the gallery over a ``faiss.IndexShards`` (CPU) or over all GPUs.
        use_gpu: search on all GPUs when faiss sees any (see module docstring).
        nprobe: IVF lists visited per query.
        ef_search: HNSW search breadth.
        chunk_size: queries per faiss call.

    An entry is one vector with metadata; it is identified by ``(sku, image_path)``: adding an entry
    whose key already exists keeps the stored one. All public methods hold one re-entrant lock, so
    searches running while another thread adds or removes see either the state before or after.
    """

    def __init__(
        self,
        dim: int,
        fingerprint: str,
        *,
        factory: str = "Flat",
        threshold: float | None = None,
        margin: float | None = None,
        num_shards: int = 1,
        use_gpu: bool = False,
        nprobe: int = 16,
        ef_search: int = 64,
        chunk_size: int = 4096,
    ) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._dim = int(dim)
        self._fingerprint = fingerprint
        self._factory = factory
        self._threshold = None if threshold is None else float(threshold)
        if margin is not None and (not math.isfinite(margin) or margin < 0):
            raise ValueError(f"margin must be finite and >= 0, or None, got {margin}")
        self._margin = None if margin is None else float(margin)
        self._num_shards = int(num_shards)
        self._chunk_size = int(chunk_size)
        self._use_gpu = bool(use_gpu)
        if self._use_gpu and faiss.get_num_gpus() == 0:
            warnings.warn("GalleryIndex(use_gpu=True) but faiss sees no GPU: searching on the CPU", stacklevel=2)
            self._use_gpu = False
        self._lock = threading.RLock()
        self._index = self._new_faiss_index()  # validates `factory` early
        self._gpu_index = None
        self._vectors = np.zeros((0, self._dim), dtype=np.float32)  # active entries, row-aligned with _ids
        self._ids = np.zeros(0, dtype=np.int64)
        self._meta: dict[int, dict[str, Any]] = {}
        self._key_to_id: dict[tuple[str, str], int] = {}
        self._tombstones: set[int] = set()  # in the faiss index but removed
        self._next_id = 0
        self._version: str | None = None  # the on-disk version this state was loaded from / last saved as
        self.set_search_breadth(nprobe=nprobe, ef_search=ef_search)  # one validation for construction and later changes

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def factory(self) -> str:
        return self._factory

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @property
    def margin(self) -> float | None:
        return self._margin

    @property
    def version(self) -> str | None:
        """Name of the on-disk version (``v-...``) this state was loaded from or last saved as; None if never."""
        return self._version

    _STATE = ("_factory", "_threshold", "_margin", "_num_shards", "_chunk_size", "_index", "_gpu_index", "_vectors",
              "_ids", "_meta", "_key_to_id", "_tombstones", "_next_id", "_version", "_nprobe", "_ef_search")

    def take_state(self, other: "GalleryIndex") -> None:
        """Become ``other`` (e.g. a newer version loaded from disk) in one step under this index's lock, so
        objects holding this index (a pipeline) follow it and a search sees the old or the new state."""
        self.check_compatible(other.fingerprint, other.dim)
        with self._lock, other._lock:
            for name in self._STATE:
                setattr(self, name, getattr(other, name))

    def set_threshold(self, threshold: float | None) -> None:
        """Set the open-set threshold (e.g. from :func:`threshold_for_far` on validation scores)."""
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite or None, got {threshold}")
        with self._lock:
            self._threshold = None if threshold is None else float(threshold)

    def set_margin(self, margin: float | None) -> None:
        """Set the look-alike margin (e.g. from ``choose_margin`` on validation scores); saved like the threshold."""
        if margin is not None and (not math.isfinite(margin) or margin < 0):
            raise ValueError(f"margin must be finite and >= 0, or None, got {margin}")
        with self._lock:
            self._margin = None if margin is None else float(margin)

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @property
    def ef_search(self) -> int:
        return self._ef_search

    def set_search_breadth(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """How much of an approximate index a search visits: IVF lists probed (`nprobe`) and the HNSW
        candidate list (`ef_search`). Wider is slower and closer to exact; saved with the index."""
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        with self._lock:
            self._nprobe = self._nprobe if nprobe is None else int(nprobe)
            self._ef_search = self._ef_search if ef_search is None else int(ef_search)

    def __contains__(self, entry_id: int) -> bool:
        with self._lock:
            return int(entry_id) in self._meta  # removed entries leave _meta (tombstones only hide them in faiss)

    @property
    def ids(self) -> np.ndarray:
        """Ids of the active entries (a copy)."""
        with self._lock:
            return self._ids.copy()

    @property
    def num_tombstones(self) -> int:
        with self._lock:
            return len(self._tombstones)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def metadata(self, entry_id: int) -> dict[str, Any]:
        """The product row of one id (KeyError if absent)."""
        with self._lock:
            return self._public_row(int(entry_id))

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of the active entries (copies)."""
        with self._lock:
            return self._ids.copy(), self._vectors.copy()

    # ------------------------------------------------------------------ faiss plumbing
    def _new_single_index(self) -> faiss.Index:
        metric = faiss.METRIC_INNER_PRODUCT
        try:
            base = faiss.index_factory(self._dim, self._factory, metric)
        except RuntimeError as err:
            raise ValueError(f"invalid faiss factory string {self._factory!r} for dim {self._dim}: {err}") from err
        if self._factory.startswith("IDMap") or faiss.try_extract_index_ivf(base) is not None:
            return base  # IVF keeps ids natively
        return faiss.index_factory(self._dim, "IDMap2," + self._factory, metric)

    def _new_faiss_index(self) -> faiss.Index:
        if self._num_shards == 1 or self._use_gpu:  # on GPU, sharding happens in the cloner
            return self._new_single_index()
        shards = faiss.IndexShards(self._dim, True, False)  # threaded, ids given by us
        for _ in range(self._num_shards):
            shards.add_shard(self._new_single_index())
        return shards

    def _sub_indexes(self, index: faiss.Index | None = None) -> list[faiss.Index]:
        index = self._index if index is None else index
        if isinstance(index, faiss.IndexShards):
            return [faiss.downcast_index(index.at(i)) for i in range(index.count())]
        return [index]

    def _apply_search_params(self) -> None:
        for sub in self._sub_indexes():
            ivf = faiss.try_extract_index_ivf(sub)
            if ivf is not None:
                ivf.nprobe = self._nprobe
            inner = faiss.downcast_index(sub.index) if isinstance(sub, faiss.IndexIDMap2) else sub
            if isinstance(inner, faiss.IndexHNSW):
                inner.hnsw.efSearch = self._ef_search

    def _train(self, index: faiss.Index, vectors: np.ndarray) -> None:
        try:
            index.train(vectors)  # IndexShards.train trains every shard on the same data
        except RuntimeError as err:
            raise ValueError(
                f"cannot train faiss index {self._factory!r} on {len(vectors)} vectors: {err}. "
                "Add more vectors in the first batch, or use fewer IVF lists / a 'Flat' index."
            ) from err

    def _searchable_index(self) -> faiss.Index:
        if not self._use_gpu:
            return self._index
        if self._gpu_index is None:  # recloned after each change; adds/removals go to the CPU index
            options = faiss.GpuMultipleClonerOptions()
            options.shard = self._num_shards > 1
            self._gpu_index = faiss.index_cpu_to_all_gpus(self._index, co=options)
        return self._gpu_index

    def _remove_from_faiss(self, ids: np.ndarray) -> bool:
        """True if removed from the faiss index; False if the type cannot remove (HNSW)."""
        subs = self._sub_indexes()
        try:
            subs[0].remove_ids(ids)
        except RuntimeError:  # faiss: "remove_ids not implemented for this type of index"
            return False
        for sub in subs[1:]:
            sub.remove_ids(ids)
        if isinstance(self._index, faiss.IndexShards):
            self._index.syncWithSubIndexes()
        return True

    # ------------------------------------------------------------------ checks
    def check_compatible(self, fingerprint: str | None = None, dim: int | None = None) -> None:
        """Raise IncompatibleIndexError naming both values if ``fingerprint`` or ``dim`` differ."""
        if fingerprint is not None and fingerprint != self._fingerprint:
            raise IncompatibleIndexError(
                f"embedding fingerprint mismatch: index was built with {self._fingerprint!r}, "
                f"queries come from {fingerprint!r}; rebuild the gallery with the current model"
            )
        if dim is not None and int(dim) != self._dim:
            raise IncompatibleIndexError(f"embedding dim mismatch: index has dim {self._dim}, got dim {dim}")

    def _checked_embeddings(self, x: np.ndarray, name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 2:
            self.check_compatible(dim=x.shape[1])
        x = as_embeddings(x, name)
        _check_normalized(x, name)
        return x

    # ------------------------------------------------------------------ mutation
    def add(self, embeddings: np.ndarray, metadata_rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Add entries whose ``(sku, image_path)`` is new; return the id of every row (existing or new).

        Args:
            embeddings: ``[n, dim]`` float32, L2-normalised.
            metadata_rows: ``n`` mappings with ``sku`` (required), ``name``, ``category``, ``price``,
                ``image_path``, ``extra`` (JSON-serialisable dict); other keys are an error.
        """
        embeddings = self._checked_embeddings(embeddings, "embeddings")
        if len(metadata_rows) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(metadata_rows)} metadata rows")
        rows = [_clean_row(row, i) for i, row in enumerate(metadata_rows)]
        with self._lock:
            out = np.empty(len(rows), dtype=np.int64)
            new_rows, new_ids, batch_keys = [], [], {}
            for i, row in enumerate(rows):
                key = (row["sku"], row["image_path"])
                if key in self._key_to_id:
                    out[i] = self._key_to_id[key]
                elif key in batch_keys:
                    out[i] = batch_keys[key]
                else:
                    out[i] = batch_keys[key] = self._next_id + len(new_ids)
                    new_rows.append(i)
                    new_ids.append(out[i])
            if not new_rows:
                return out
            vecs = embeddings[new_rows]
            ids = np.asarray(new_ids, dtype=np.int64)
            if not self._index.is_trained:
                self._train(self._index, np.concatenate([self._vectors, vecs]))
            self._index.add_with_ids(vecs, ids)  # faiss first: if it throws, our state is unchanged
            self._vectors = np.concatenate([self._vectors, vecs])
            self._ids = np.concatenate([self._ids, ids])
            for i, entry_id in zip(new_rows, new_ids):
                self._meta[int(entry_id)] = rows[i]
                self._key_to_id[(rows[i]["sku"], rows[i]["image_path"])] = int(entry_id)
            self._next_id += len(new_ids)
            self._gpu_index = None
            return out

    def remove(self, *, skus: Iterable[str] | None = None, ids: Iterable[int] | None = None) -> int:
        """Remove every entry of the given skus and/or ids (unknown ones are ignored); return how many.

        Removed from the faiss index where the type allows, else tombstoned (see :meth:`rebuild`)."""
        if isinstance(skus, str):  # one sku, not its characters
            skus = [skus]
        ids = [] if ids is None else np.atleast_1d(np.asarray(ids, dtype=np.int64)).tolist()
        with self._lock:
            targets = {i for i in ids if i in self._meta}
            sku_set = {str(s) for s in (skus or ())}
            if sku_set:
                targets |= {i for i, row in self._meta.items() if row["sku"] in sku_set}
            if not targets:
                return 0
            arr = np.fromiter(sorted(targets), dtype=np.int64)
            if not self._remove_from_faiss(arr):
                self._tombstones |= targets
            keep = ~np.isin(self._ids, arr)
            self._ids, self._vectors = self._ids[keep], self._vectors[keep]
            for i in targets:
                row = self._meta.pop(i)
                del self._key_to_id[(row["sku"], row["image_path"])]
            self._gpu_index = None
            return len(targets)

    def update(self, *, skus: Iterable[str], **fields: Any) -> int:
        """Set ``name``/``category``/``price`` on every entry of these skus; return how many entries."""
        if isinstance(skus, str):
            skus = [skus]
        bad = set(fields) - {"name", "category", "price"}
        if bad:
            raise ValueError(f"only name, category and price can be updated, not {sorted(bad)}")
        if "price" in fields and fields["price"] is not None:
            fields["price"] = float(fields["price"])
        sku_set = {str(s) for s in skus}
        with self._lock:
            targets = [row for row in self._meta.values() if row["sku"] in sku_set]
            for row in targets:
                row.update(fields)
            return len(targets)

    def rebuild(self) -> None:
        """New faiss index from the stored vectors: drops tombstones, retrains IVF on everything."""
        with self._lock:
            index = self._new_faiss_index()
            if len(self._ids):
                if not index.is_trained:
                    self._train(index, self._vectors)
                index.add_with_ids(self._vectors, self._ids)
            self._index, self._gpu_index = index, None
            self._tombstones = set()

    # ------------------------------------------------------------------ search
    def _public_row(self, entry_id: int) -> dict[str, Any]:
        row = self._meta[entry_id]
        return {"id": entry_id, **row, "extra": json.loads(json.dumps(row["extra"]))}  # deep copy

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
        self.check_compatible(fingerprint=fingerprint)
        queries = self._checked_embeddings(queries, "queries")
        with self._lock:
            if len(self._ids) == 0:
                raise ValueError("gallery index is empty: add products before searching")
            self._apply_search_params()
            index = self._searchable_index()
            # Over-fetch by the number of tombstones so k live results remain after filtering.
            fetch = min(k + len(self._tombstones), max(k, index.ntotal))
            tomb = np.fromiter(self._tombstones, dtype=np.int64)
            nq = len(queries)
            all_scores = np.empty((nq, k), dtype=np.float32)
            all_ids = np.empty((nq, k), dtype=np.int64)
            for start in range(0, nq, self._chunk_size):
                stop = min(start + self._chunk_size, nq)
                scores, ids = index.search(queries[start:stop], fetch)
                ids = ids.astype(np.int64, copy=False)
                drop = (ids < 0) | np.isin(ids, tomb)
                scores, ids = drop_and_compact(scores, ids, drop, k)
                all_scores[start:stop], all_ids[start:stop] = scores, ids
            metadata = [[None if i < 0 else self._public_row(int(i)) for i in row] for row in all_ids]
            accepted = all_ids >= 0
            if self._threshold is not None:
                # float64: a Python float against float32 scores would be compared in float32.
                accepted &= all_scores.astype(np.float64) >= self._threshold
        return SearchResult(ids=all_ids, scores=all_scores, accepted=accepted, metadata=metadata)

    # ------------------------------------------------------------------ persistence
    def _manifest(self, files: dict[str, int], index_files: list[str]) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self._fingerprint,
            "dim": self._dim,
            "factory": self._factory,
            "threshold": self._threshold,
            "margin": self._margin,
            "num_shards": self._num_shards,
            "nprobe": self._nprobe,
            "ef_search": self._ef_search,
            "chunk_size": self._chunk_size,
            "next_id": self._next_id,
            "count": int(len(self._ids)),
            "index_files": index_files,
            "file_sizes": files,
        }

    def _write_sqlite(self, path: Path, previous: Path | None = None, audit: Sequence[tuple] = ()) -> int:
        """Products, tombstones, and the audit trail: ``previous``'s rows (if it has any) + ``audit``.
        Returns the number of audit rows."""
        conn = sqlite3.connect(path)
        try:
            conn.execute(
                "CREATE TABLE audit (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, key_id TEXT, action TEXT NOT NULL,"
                " sku TEXT NOT NULL, old_price REAL, new_price REAL, image_sha256 TEXT)"
            )
            if previous is not None and previous.is_file():
                old = sqlite3.connect(f"file:{previous}?mode=ro", uri=True)
                try:
                    if _has_audit_table(old):
                        conn.executemany(f"INSERT INTO audit (seq, {', '.join(AUDIT_FIELDS)}) VALUES (?{', ?' * 7})",
                                         old.execute(f"SELECT seq, {', '.join(AUDIT_FIELDS)} FROM audit ORDER BY seq"))
                finally:
                    old.close()
            conn.executemany(f"INSERT INTO audit ({', '.join(AUDIT_FIELDS)}) VALUES (?{', ?' * 6})", audit)
            conn.execute(
                "CREATE TABLE products (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, name TEXT, category TEXT,"
                " price REAL, image_path TEXT NOT NULL, extra TEXT NOT NULL, UNIQUE (sku, image_path))"
            )
            conn.execute("CREATE INDEX products_sku ON products (sku)")
            conn.execute("CREATE TABLE tombstones (id INTEGER PRIMARY KEY)")
            conn.executemany(
                "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (i, r["sku"], r["name"], r["category"], r["price"], r["image_path"], json.dumps(r["extra"]))
                    for i, r in self._meta.items()
                ),
            )
            conn.executemany("INSERT INTO tombstones VALUES (?)", ((i,) for i in sorted(self._tombstones)))
            n_audit = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
            conn.commit()
        finally:
            conn.close()
        return n_audit

    def _write_version(self, tmp: Path, previous: Path | None = None, audit: Sequence[tuple] = ()) -> None:
        """Write every file of one version into ``tmp`` and fsync them; the manifest comes last."""
        cpu_index = self._index  # the CPU index is the source of truth even with use_gpu
        subs = self._sub_indexes(cpu_index) if isinstance(cpu_index, faiss.IndexShards) else [cpu_index]
        index_files = [f"index.shard{i}.faiss" if len(subs) > 1 else "index.faiss" for i in range(len(subs))]
        for name, sub in zip(index_files, subs):
            faiss.write_index(sub, str(tmp / name))
        _save_npy(tmp / "vectors.npy", self._vectors)
        _save_npy(tmp / "ids.npy", self._ids)
        n_audit = self._write_sqlite(tmp / "metadata.sqlite", previous, audit)
        names = [*index_files, "vectors.npy", "ids.npy", "metadata.sqlite"]
        for name in names:
            _fsync_file(tmp / name)
        sizes = {name: (tmp / name).stat().st_size for name in names}
        with open(tmp / "manifest.json", "w") as f:
            json.dump({**self._manifest(sizes, index_files), "audit_rows": n_audit}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)

    def save(self, directory: str | os.PathLike, audit: Sequence[Mapping[str, Any]] = ()) -> Path:
        """Save atomically into ``directory`` (created if missing); return the version directory.

        ``audit``: rows (:data:`AUDIT_FIELDS`) appended to the trail copied from the live version, committed
        with this version. Keeps the previous version for readers that already opened it; older versions and
        temp directories left by crashed saves are removed. Processes sharing the directory hold
        :func:`directory_lock` around their read-modify-write; without it a second process saving
        concurrently may have its temp directory cleaned away (its save then fails; the live version is never
        damaged)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        audit_rows = [_audit_row(r, i) for i, r in enumerate(audit)]
        if any(e.name != LOCK_FILE for e in root.iterdir()) and not (root / "CURRENT").exists():
            raise ValueError(f"{root} is not empty and holds no GalleryIndex (no CURRENT file); refusing to write")
        with self._lock:
            previous = (root / "CURRENT").read_text().strip() if (root / "CURRENT").exists() else None
            tmp = root / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                self._write_version(tmp, root / previous / "metadata.sqlite" if previous else None, audit_rows)
                version = root / f"v-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
                os.rename(tmp, version)
                _fsync_dir(root)
                pointer = root / f"CURRENT.tmp-{uuid.uuid4().hex}"
                with open(pointer, "w") as f:
                    f.write(version.name + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(pointer, root / "CURRENT")  # the commit point
                _fsync_dir(root)
                self._version = version.name
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            # Best-effort cleanup of older versions and crashed saves, under the lock so another thread's
            # save in progress is not mistaken for debris (one writing process per directory).
            for entry in root.iterdir():
                stale_version = entry.name.startswith("v-") and entry.name not in (version.name, previous)
                if stale_version or entry.name.startswith((".tmp-", "CURRENT.tmp-")):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        return version

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        fingerprint: str | None = None,
        dim: int | None = None,
        use_gpu: bool = False,
    ) -> "GalleryIndex":
        """Load the version named by ``<directory>/CURRENT``.

        ``fingerprint``/``dim``, if given, must match the saved ones (IncompatibleIndexError)."""
        root = Path(directory)
        current = root / "CURRENT"
        if not current.is_file():
            raise FileNotFoundError(f"no GalleryIndex at {root}: {current} is missing")
        name = current.read_text().strip()
        version = root / name
        if not name.startswith("v-") or not version.is_dir():
            raise ValueError(f"{current} names {name!r}, which is not a version directory in {root}")
        manifest_path = version / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {manifest_path}: {err}") from err
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: format_version {manifest.get('format_version')} != {FORMAT_VERSION}")
        for file_name, size in manifest["file_sizes"].items():
            actual = (version / file_name).stat().st_size if (version / file_name).exists() else None
            if actual != size:
                raise ValueError(f"{version / file_name}: size {actual} != {size} recorded in the manifest")

        self = cls(
            manifest["dim"],
            manifest["fingerprint"],
            factory=manifest["factory"],
            threshold=manifest["threshold"],
            margin=manifest.get("margin"),  # versions saved before margins existed: none
            num_shards=manifest["num_shards"],
            use_gpu=use_gpu,
            nprobe=manifest["nprobe"],
            ef_search=manifest["ef_search"],
            chunk_size=manifest["chunk_size"],
        )
        self.check_compatible(fingerprint, dim)
        subs = [faiss.read_index(str(version / f)) for f in manifest["index_files"]]
        if len(subs) > 1:
            index = faiss.IndexShards(self._dim, True, False)
            for sub in subs:
                index.add_shard(sub)
        else:
            index = subs[0]
        self._index = index
        self._vectors = np.load(version / "vectors.npy", allow_pickle=False)
        self._ids = np.load(version / "ids.npy", allow_pickle=False)
        gpu_needs_single = self._use_gpu and len(subs) > 1  # GPU shards via the cloner, not IndexShards
        conn = sqlite3.connect(f"file:{version / 'metadata.sqlite'}?mode=ro", uri=True)
        try:
            for entry_id, sku, name_, category, price, image_path, extra in conn.execute(
                "SELECT id, sku, name, category, price, image_path, extra FROM products"
            ):
                self._meta[entry_id] = {
                    "sku": sku,
                    "name": name_,
                    "category": category,
                    "price": price,
                    "image_path": image_path,
                    "extra": json.loads(extra),
                }
                self._key_to_id[(sku, image_path)] = entry_id
            self._tombstones = {i for (i,) in conn.execute("SELECT id FROM tombstones")}
        finally:
            conn.close()
        self._next_id = manifest["next_id"]
        self._version = name
        expected = manifest["count"]
        if not (len(self._ids) == len(self._vectors) == len(self._meta) == expected):
            raise ValueError(
                f"{version}: inconsistent counts: {len(self._ids)} ids, {len(self._vectors)} vectors, "
                f"{len(self._meta)} metadata rows, manifest says {expected}"
            )
        if self._index.ntotal != expected + len(self._tombstones):
            raise ValueError(
                f"{version}: faiss index holds {self._index.ntotal} vectors, expected "
                f"{expected} live + {len(self._tombstones)} tombstoned"
            )
        if gpu_needs_single:
            self.rebuild()
        return self
