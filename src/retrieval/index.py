"""A product gallery: a faiss index of embeddings plus product metadata, saved atomically.

Only numpy, faiss and the standard library; the on-disk format (versioned directories, the ``CURRENT``
pointer, SQLite metadata and the audit trail, locking between processes) is src/retrieval/gallery_store.py.

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

Directory layout, crash safety and sharing a directory between processes: see
src/retrieval/gallery_store.py (:meth:`GalleryIndex.save` and :meth:`GalleryIndex.load` go through it).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import faiss
import numpy as np

from . import gallery_store
from .index_base import GalleryBase, SearchResult, _checked_margin
from .search import drop_and_compact, new_index, train_index

__all__ = ["GalleryIndex"]


class GalleryIndex(GalleryBase):
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
        super().__init__(dim, fingerprint)
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._factory = factory
        self._threshold = None if threshold is None else float(threshold)
        self._margin = _checked_margin(margin)
        self._num_shards = int(num_shards)
        self._chunk_size = int(chunk_size)
        self._use_gpu = bool(use_gpu)
        if self._use_gpu and faiss.get_num_gpus() == 0:
            warnings.warn("GalleryIndex(use_gpu=True) but faiss sees no GPU: searching on the CPU", stacklevel=2)
            self._use_gpu = False
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
    def factory(self) -> str:
        return self._factory

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
    def _new_faiss_index(self) -> faiss.Index:
        if self._num_shards == 1 or self._use_gpu:  # on GPU, sharding happens in the cloner
            return new_index(self._dim, self._factory, own_ids=True)
        shards = faiss.IndexShards(self._dim, True, False)  # threaded, ids given by us
        for _ in range(self._num_shards):
            shards.add_shard(new_index(self._dim, self._factory, own_ids=True))
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

    # ------------------------------------------------------------------ mutation
    def add(self, embeddings: np.ndarray, metadata_rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Add entries whose ``(sku, image_path)`` is new; return the id of every row (existing or new).

        Args:
            embeddings: ``[n, dim]`` float32, L2-normalised.
            metadata_rows: ``n`` mappings with ``sku`` (required), ``name``, ``category``, ``price``,
                ``image_path``, ``extra`` (JSON-serialisable dict); other keys are an error.
        """
        embeddings, rows = self._checked_batch(embeddings, metadata_rows)
        with self._lock:
            out, new_rows = self._assign_ids([(row["sku"], row["image_path"]) for row in rows], self._key_to_id)
            if not new_rows:
                return out
            vecs = embeddings[new_rows]
            ids = out[new_rows]
            if not self._index.is_trained:
                train_index(self._index, np.concatenate([self._vectors, vecs]), self._factory)
            self._index.add_with_ids(vecs, ids)  # faiss first: if it throws, our state is unchanged
            self._vectors = np.concatenate([self._vectors, vecs])
            self._ids = np.concatenate([self._ids, ids])
            for i, entry_id in zip(new_rows, ids.tolist()):
                self._meta[entry_id] = rows[i]
                self._key_to_id[(rows[i]["sku"], rows[i]["image_path"])] = entry_id
            self._next_id += len(new_rows)
            self._gpu_index = None
            return out

    def remove(self, *, skus: Iterable[str] | None = None, ids: Iterable[int] | None = None) -> int:
        """Remove every entry of the given skus and/or ids (unknown ones are ignored); return how many.

        Removed from the faiss index where the type allows, else tombstoned (see :meth:`rebuild`)."""
        sku_set, id_list = self._skus_and_ids(skus, ids)
        with self._lock:
            targets = {i for i in id_list if i in self._meta}
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
        sku_set, _ = self._skus_and_ids(skus, None)
        fields = self._update_fields(fields)
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
                train_index(index, self._vectors, self._factory)
                index.add_with_ids(self._vectors, self._ids)
            self._index, self._gpu_index = index, None
            self._tombstones = set()

    # ------------------------------------------------------------------ search
    def _public_row(self, entry_id: int) -> dict[str, Any]:
        row = self._meta[entry_id]
        return {"id": entry_id, **row, "extra": json.loads(json.dumps(row["extra"]))}  # deep copy

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
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
            return self._result(all_ids, all_scores, metadata, self._threshold)

    # ------------------------------------------------------------------ persistence (src/retrieval/gallery_store.py)
    def save(self, directory: str | os.PathLike, audit: Sequence[Mapping[str, Any]] = ()) -> Path:
        """Save atomically into ``directory`` (created if missing) as its live version; return the version
        directory. ``audit``: rows (:data:`~src.retrieval.gallery_store.AUDIT_FIELDS`) committed with it.
        See :func:`~src.retrieval.gallery_store.save_version`."""
        with self._lock:
            stored = gallery_store.StoredGallery(
                settings={"fingerprint": self._fingerprint, "dim": self._dim, "factory": self._factory,
                          "threshold": self._threshold, "margin": self._margin, "num_shards": self._num_shards,
                          "nprobe": self._nprobe, "ef_search": self._ef_search, "chunk_size": self._chunk_size},
                indexes=self._sub_indexes(self._index),  # the CPU index is the source of truth even with use_gpu
                vectors=self._vectors, ids=self._ids, meta=self._meta, tombstones=self._tombstones,
                next_id=self._next_id,
            )
            version = gallery_store.save_version(directory, stored, audit)
            self._version = version.name
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
        version, manifest = gallery_store.read_manifest(directory)
        self = cls(**gallery_store.settings_of(manifest), use_gpu=use_gpu)
        self.check_compatible(fingerprint, dim)
        stored = gallery_store.read_version(version, manifest)
        if len(stored.indexes) > 1:
            index = faiss.IndexShards(self._dim, True, False)
            for sub in stored.indexes:
                index.add_shard(sub)
        else:
            index = stored.indexes[0]
        self._index, self._vectors, self._ids = index, stored.vectors, stored.ids
        self._meta, self._tombstones, self._next_id = stored.meta, stored.tombstones, stored.next_id
        self._key_to_id = {(row["sku"], row["image_path"]): i for i, row in stored.meta.items()}
        self._version = version.name
        if self._use_gpu and len(stored.indexes) > 1:  # GPU shards via the cloner, not IndexShards
            self.rebuild()
        return self
