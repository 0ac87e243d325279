"""A product gallery in a Milvus collection: the :class:`~src.retrieval.index.GalleryIndex` interface on Milvus.

Faiss (:class:`GalleryIndex`, a directory on disk) stays the default. This backend is for a gallery shared by
many processes, replicas or stores: every instance pointed at the same collection sees the same products,
because the collection *is* the gallery (no in-process copy, no save/load of files).

Where it lives is a URI (:func:`parse_milvus_uri`):

* a path ending in ``.db`` (``data/gallery.db``): **Milvus Lite**, embedded in this process, one file. Used
  by the tests; the process needs no server.
* ``milvus://host:19530`` (gRPC over plain HTTP/2) or ``milvus+https://host:443``: a Milvus standalone or
  cluster; ``http://`` and ``https://`` are passed through unchanged. The token (``user:password`` or an API
  key) comes from ``token=`` or the ``MILVUS_TOKEN`` environment variable, never from the URI.

A ``#name`` suffix picks the collection (default ``gallery``): ``milvus://db.shop:19530#store_17``.

Collection layout (one row per gallery image)::

    id          INT64 primary key (assigned by us, 0, 1, 2, ... like GalleryIndex; never reused)
    vector      FLOAT_VECTOR[dim], metric IP (inner product = cosine on L2-normalised vectors)
    sku, image_path, name, category   VARCHAR (name, category nullable)
    price       DOUBLE (nullable)
    extra       JSON
    sku_hash, key_hash   INT64: sha256 of sku / of (sku, image_path), first 8 bytes

Filters on strings would need escaping inside Milvus' expression language (milvus-lite 3.2.2 has no
``filter_params`` templating), so lookups by SKU and the ``(sku, image_path)`` de-duplication filter on the
integer hashes and then compare the real strings in Python (a hash collision costs nothing but a row read).

The model fingerprint, the dimension, the threshold and the next id are collection *properties*
(``gallery.*``), kept with the collection (Milvus Lite does not keep the collection description). Opening a
collection built with another fingerprint or dimension raises :class:`IncompatibleIndexError` naming the URI
and collection; a collection without these properties is refused rather than written to.

Semantics that differ from the Faiss backend:

* Every change is written to Milvus at once; there is no ``save``/``load`` of a directory and no version
  pointer (the audit trail is a second collection: milvus_audit.py). Reopen with :meth:`MilvusGalleryIndex.open`
  (the analogue of ``GalleryIndex.load``); :meth:`reload` reads back what other processes changed.
* Removals are real deletes (Milvus compacts by itself): ``num_tombstones`` is always 0, ``rebuild`` is a no-op.
* ``index_type`` is a Milvus index (``"FLAT"`` exact, default; ``"HNSW"``, ``"IVF_FLAT"``, ... with
  ``index_params``), not a faiss factory string. Searches use ``search_params`` (e.g. ``{"ef": 64}``).
* One writer at a time per collection: ids come from the ``gallery.next_id`` property, read-modified-written
  by ``add`` under this object's lock only (re-read first by ``reload``). Several writing processes need an
  outside lock (the Faiss backend needs ``directory_lock`` for the same reason). Readers may be many.

The service and ``src.recognize`` use it as ``--index <uri>`` (src/recognition/milvus_gallery.py); in Python::

    from src.retrieval.milvus_index import MilvusGalleryIndex
    index = MilvusGalleryIndex("milvus://db.shop:19530#gallery", dim=128, fingerprint=embedder.fingerprint)
    index.add(vectors, [{"sku": "4006381333931", "image_path": "a.jpg", "price": 1.99}])
    result = index.search(queries, k=5)   # same SearchResult as GalleryIndex

Needs ``pymilvus`` (and ``milvus-lite`` for ``.db`` files), imported only when an index is opened, so
``src.retrieval`` itself still imports with numpy and faiss alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .index_base import METADATA_FIELDS, GalleryBase, SearchResult, _checked_threshold, check_match

__all__ = ["MilvusGalleryIndex", "parse_milvus_uri"]

DEFAULT_COLLECTION = "gallery"
_PROP = "gallery."  # prefix of our collection properties
_TEXT_MAX = 65535  # Milvus' largest VARCHAR (bytes)
_TOPK_MAX = 16384  # Milvus' largest limit (topk) per search
_META_OUT = ["sku", "name", "category", "price", "image_path", "extra"]


def parse_milvus_uri(uri: str | os.PathLike) -> tuple[str, str]:
    """``(client uri, collection)`` from a gallery URI (see the module docstring)."""
    text = os.fspath(uri)
    location, _, collection = text.partition("#")
    collection = collection or DEFAULT_COLLECTION
    if location.startswith("milvus://"):
        location = "http://" + location[len("milvus://"):]
    elif location.startswith("milvus+https://"):
        location = "https://" + location[len("milvus+https://"):]
    elif not location.startswith(("http://", "https://")) and not location.endswith(".db"):
        raise ValueError(f"not a Milvus gallery URI: {text!r} (want a path ending in .db, milvus://host:port, "
                         "milvus+https://host:port, http(s)://host:port; optional #collection)")
    return location, collection


def _hash64(*parts: str) -> int:
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def _int_list(values: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


class MilvusGalleryIndex(GalleryBase):
    """Searchable product gallery in a Milvus collection, with open-set threshold and a fingerprint.

    Args:
        uri: a ``.db`` path (Milvus Lite) or a server URI, optionally ``#collection`` (module docstring).
        dim: embedding size.
        fingerprint: identifies the embedding model and preprocessing; an existing collection with another
            fingerprint or dim is refused (IncompatibleIndexError), as are searches with another fingerprint.
        threshold: open-set rejection (``score < threshold`` is not ``accepted``). ``None`` keeps the stored
            threshold of an existing collection (none for a new one); a number replaces it.
        index_type, index_params: Milvus vector index (``"FLAT"`` exact by default), used when creating.
        search_params: extra Milvus search parameters (``{"ef": 64}`` for HNSW, ``{"nprobe": 16}`` for IVF).
        token: server credentials; default ``$MILVUS_TOKEN``. Unused by Milvus Lite.
        chunk_size: queries per Milvus search call.
        create: create the collection if it is missing (``False``: FileNotFoundError naming the URI).
    """

    def __init__(
        self,
        uri: str | os.PathLike,
        dim: int,
        fingerprint: str,
        *,
        threshold: float | None = None,
        index_type: str = "FLAT",
        index_params: Mapping[str, Any] | None = None,
        search_params: Mapping[str, Any] | None = None,
        token: str | None = None,
        chunk_size: int = 1024,
        create: bool = True,
    ) -> None:
        super().__init__(dim, fingerprint)
        threshold = _checked_threshold(threshold)
        from pymilvus import MilvusClient  # optional dependency: only when a Milvus gallery is opened

        self._uri = os.fspath(uri)
        client_uri, self._collection = parse_milvus_uri(uri)
        if client_uri.endswith(".db"):
            os.makedirs(os.path.dirname(os.path.abspath(client_uri)), exist_ok=True)
        token = os.environ.get("MILVUS_TOKEN", "") if token is None else token
        self._client = MilvusClient(client_uri, token=token)
        self._search_params = dict(search_params or {})
        self._chunk_size = int(chunk_size)
        try:
            if self._client.has_collection(self._collection):
                props = self._read_properties()
                check_match(props["fingerprint"], props["dim"], fingerprint, dim, where=self.location)
                self._threshold, self._margin = props["threshold"], props["margin"]
                self._next_id = props["next_id"]
                self._index_type = props["index_type"]
                if threshold is not None:
                    self.set_threshold(threshold)
            elif not create:
                raise FileNotFoundError(f"no gallery collection at {self.location}")
            else:
                self._threshold = threshold
                self._next_id = 0
                self._index_type = str(index_type)
                self._create(index_params or {})
        except BaseException:
            self._client.close()
            raise

    @classmethod
    def open(cls, uri: str | os.PathLike, *, fingerprint: str | None = None, dim: int | None = None,
             **kwargs: Any) -> "MilvusGalleryIndex":
        """Open an existing gallery collection (the analogue of ``GalleryIndex.load``): ``fingerprint``/``dim``,
        if given, must match the stored ones (IncompatibleIndexError naming the URI)."""
        from pymilvus import MilvusClient

        client_uri, collection = parse_milvus_uri(uri)
        if client_uri.endswith(".db") and not os.path.exists(client_uri):
            raise FileNotFoundError(f"no Milvus Lite file at {client_uri}")
        token = kwargs.get("token")
        client = MilvusClient(client_uri, token=os.environ.get("MILVUS_TOKEN", "") if token is None else token)
        try:
            if not client.has_collection(collection):
                raise FileNotFoundError(f"no gallery collection at {uri}")
            props = cls._properties_of(client, collection, f"{uri}")
        finally:
            client.close()
        check_match(props["fingerprint"], props["dim"], fingerprint, dim, where=f"{uri}")
        return cls(uri, props["dim"], props["fingerprint"], create=False, **kwargs)

    # ------------------------------------------------------------------ collection plumbing
    @property
    def location(self) -> str:
        """``<uri>`` with the collection, for error messages."""
        return f"{self._uri.partition('#')[0]}#{self._collection}"

    def _create(self, index_params: Mapping[str, Any]) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        schema.add_field("sku", DataType.VARCHAR, max_length=_TEXT_MAX)
        schema.add_field("image_path", DataType.VARCHAR, max_length=_TEXT_MAX)
        schema.add_field("name", DataType.VARCHAR, max_length=_TEXT_MAX, nullable=True)
        schema.add_field("category", DataType.VARCHAR, max_length=_TEXT_MAX, nullable=True)
        schema.add_field("price", DataType.DOUBLE, nullable=True)
        schema.add_field("extra", DataType.JSON)
        schema.add_field("sku_hash", DataType.INT64)
        schema.add_field("key_hash", DataType.INT64)
        params = self._client.prepare_index_params()
        params.add_index("vector", index_type=self._index_type, metric_type="IP", params=dict(index_params))
        self._client.create_collection(
            self._collection, schema=schema, index_params=params, consistency_level="Strong",
            properties=self._properties(),
        )

    def _properties(self) -> dict[str, str]:
        return {
            f"{_PROP}fingerprint": self._fingerprint,
            f"{_PROP}dim": str(self._dim),
            f"{_PROP}threshold": "" if self._threshold is None else repr(self._threshold),
            f"{_PROP}margin": "" if self._margin is None else repr(self._margin),
            f"{_PROP}next_id": str(self._next_id),
            f"{_PROP}index_type": self._index_type,
        }

    @staticmethod
    def _properties_of(client: Any, collection: str, where: str) -> dict[str, Any]:
        props = client.describe_collection(collection).get("properties") or {}
        needed = ("fingerprint", "dim", "threshold", "next_id", "index_type")
        missing = [k for k in needed if f"{_PROP}{k}" not in props]
        if missing:
            raise ValueError(f"{where} is not a gallery collection (properties {missing} missing); refusing to use it")
        threshold = props[f"{_PROP}threshold"]
        return {
            "fingerprint": props[f"{_PROP}fingerprint"],
            "dim": int(props[f"{_PROP}dim"]),
            "threshold": float(threshold) if threshold else None,
            "margin": float(props[f"{_PROP}margin"]) if props.get(f"{_PROP}margin") else None,  # older: none
            "next_id": int(props[f"{_PROP}next_id"]),
            "index_type": props[f"{_PROP}index_type"],
        }

    def _read_properties(self) -> dict[str, Any]:
        return self._properties_of(self._client, self._collection, self.location)

    def _write_properties(self) -> None:
        self._client.alter_collection_properties(self._collection, properties=self._properties())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "MilvusGalleryIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ properties
    @property
    def factory(self) -> str:
        """The Milvus index type (``"FLAT"``, ``"HNSW"``, ...); named like GalleryIndex.factory."""
        return self._index_type

    @property
    def num_tombstones(self) -> int:
        return 0  # deletes are real

    def _threshold_changed(self) -> None:
        self._write_properties()  # stored with the collection, so every process opening it gets it

    def reload(self) -> None:
        """Read back the settings other processes may have changed: threshold, margin and the id counter."""
        with self._lock:
            props = self._read_properties()
            self._threshold, self._margin, self._next_id = props["threshold"], props["margin"], props["next_id"]

    def rebuild(self) -> None:
        """No-op: Milvus removes deleted rows itself (compaction)."""

    def __len__(self) -> int:
        rows = self._client.query(self._collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __contains__(self, entry_id: int) -> bool:
        return bool(self._client.get(self._collection, ids=[int(entry_id)], output_fields=["id"]))

    def _all(self, fields: list[str]) -> list[dict[str, Any]]:
        rows = self._client.query(self._collection, filter="id >= 0", output_fields=["id", *fields],
                                  limit=max(len(self), 1))
        return sorted(rows, key=lambda r: r["id"])

    @property
    def ids(self) -> np.ndarray:
        """Ids of the stored entries, ascending (reads the whole id column: for tests and small galleries)."""
        return np.array([r["id"] for r in self._all([])], dtype=np.int64)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of the stored entries (reads the whole collection)."""
        rows = self._all(["vector"])
        vecs = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), self._dim)
        return np.array([r["id"] for r in rows], dtype=np.int64), vecs

    @staticmethod
    def _public_row(row: Mapping[str, Any]) -> dict[str, Any]:
        out = {"id": int(row["id"]), **{f: row.get(f) for f in METADATA_FIELDS}}
        out["extra"] = dict(out["extra"] or {})
        return out

    def metadata(self, entry_id: int) -> dict[str, Any]:
        """The product row of one id (KeyError if absent)."""
        rows = self._client.get(self._collection, ids=[int(entry_id)], output_fields=_META_OUT)
        if not rows:
            raise KeyError(entry_id)
        return self._public_row(rows[0])

    # ------------------------------------------------------------------ mutation
    def _rows_with_hashes(self, field: str, hashes: Iterable[int], fields: list[str]) -> list[dict[str, Any]]:
        hashes = sorted(set(hashes))
        out = []
        for start in range(0, len(hashes), 1000):  # keeps each filter expression short
            out += self._client.query(self._collection, filter=f"{field} in {_int_list(hashes[start:start + 1000])}",
                                      output_fields=["id", *fields])
        return out

    def add(self, embeddings: np.ndarray, metadata_rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Add entries whose ``(sku, image_path)`` is new; return the id of every row (existing or new).
        Same arguments and errors as :meth:`GalleryIndex.add`."""
        embeddings, rows = self._checked_batch(embeddings, metadata_rows)
        for row in rows:
            for field in ("sku", "image_path", "name", "category"):
                if row[field] is not None and len(row[field].encode()) > _TEXT_MAX:
                    raise ValueError(f"metadata {field!r} longer than {_TEXT_MAX} bytes: {row[field][:40]!r}...")
        keys = [(row["sku"], row["image_path"]) for row in rows]
        key_hashes = [_hash64(*key) for key in keys]
        with self._lock:
            stored = self._rows_with_hashes("key_hash", key_hashes, ["sku", "image_path"])
            out, new = self._assign_ids(keys, {(r["sku"], r["image_path"]): int(r["id"]) for r in stored})
            entities = [{"id": int(out[i]), "vector": embeddings[i].tolist(), **rows[i],
                         "sku_hash": _hash64(rows[i]["sku"]), "key_hash": key_hashes[i]} for i in new]
            if entities:
                # The id counter moves first: a crash after it wastes ids, one before the insert never reuses them.
                self._next_id += len(entities)
                self._write_properties()
                self._client.insert(self._collection, entities)
            return out

    def _resolve(self, skus: Iterable[str] | None, ids: Iterable[int] | None) -> list[dict[str, Any]]:
        sku_set, id_list = self._skus_and_ids(skus, ids)
        found: dict[int, dict[str, Any]] = {}
        if id_list:
            for r in self._client.get(self._collection, ids=sorted(set(id_list)), output_fields=["sku"]):
                found[int(r["id"])] = r
        if sku_set:
            for r in self._rows_with_hashes("sku_hash", (_hash64(s) for s in sku_set), ["sku"]):
                if r["sku"] in sku_set:
                    found[int(r["id"])] = r
        return list(found.values())

    def remove(self, *, skus: Iterable[str] | None = None, ids: Iterable[int] | None = None) -> int:
        """Delete every entry of the given skus and/or ids (unknown ones are ignored); return how many."""
        with self._lock:
            targets = sorted(int(r["id"]) for r in self._resolve(skus, ids))
            if targets:
                self._client.delete(self._collection, ids=targets)
            return len(targets)

    def update(self, *, skus: Iterable[str], **fields: Any) -> int:
        """Set ``name``/``category``/``price`` on every entry of these skus; return how many entries."""
        fields = self._update_fields(fields)
        with self._lock:
            ids = [int(r["id"]) for r in self._resolve(skus, None)]
            if not ids:
                return 0
            rows = self._client.get(self._collection, ids=ids,
                                    output_fields=["vector", *_META_OUT, "sku_hash", "key_hash"])
            for row in rows:
                row.update(fields)
                row["vector"] = [float(v) for v in row["vector"]]
            self._client.upsert(self._collection, rows)
            return len(rows)

    # ------------------------------------------------------------------ search
    def _check_k(self, k: int) -> None:
        if k > _TOPK_MAX:
            raise ValueError(f"k={k} is more than Milvus returns per query ({_TOPK_MAX})")

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        nq = len(queries)
        ids = np.full((nq, k), -1, dtype=np.int64)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        metadata: list[list[dict[str, Any] | None]] = [[None] * k for _ in range(nq)]
        params = {"metric_type": "IP", "params": dict(self._search_params)}
        threshold = self._threshold
        for start in range(0, nq, self._chunk_size):
            hits = self._client.search(self._collection, data=queries[start:start + self._chunk_size].tolist(),
                                       limit=k, anns_field="vector", search_params=params, output_fields=_META_OUT)
            for qi, row in enumerate(hits, start):
                for j, hit in enumerate(row):
                    ids[qi, j], scores[qi, j] = int(hit["id"]), float(hit["distance"])
                    metadata[qi][j] = self._public_row({"id": hit["id"], **hit["entity"]})
        if nq and (ids < 0).all() and len(self) == 0:
            raise ValueError("gallery index is empty: add products before searching")
        return self._result(ids, scores, metadata, threshold)
