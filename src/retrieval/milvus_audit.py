"""The audit trail of a Milvus gallery: a second collection, ``<gallery collection>_audit``, next to it.

The Faiss gallery keeps its trail in the version's SQLite (src/retrieval/gallery_store.py); a gallery that is a
Milvus collection keeps it in Milvus, so every process and replica pointed at the gallery appends to and reads
the same trail. One row per event, the same fields (:data:`~src.retrieval.gallery_store.AUDIT_FIELDS`):

    seq          INT64 primary key, assigned by Milvus (increasing: append order)
    time, key_id, action, sku        VARCHAR (key_id nullable)
    old_price, new_price             DOUBLE (nullable)
    image_sha256                     VARCHAR (nullable)
    sku_hash     INT64 (filtering by SKU without string escaping, as the gallery collection does)
    unused       FLOAT_VECTOR[2] (Milvus refuses a collection without a vector field)

Milvus has no transaction across two collections: the gallery change is written first and its rows right
after, so a crash between the two loses audit rows, never a change (the Faiss backend commits both at once).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from .gallery_store import AUDIT_FIELDS
from .milvus_index import _TEXT_MAX, _hash64, _int_list, parse_milvus_uri

__all__ = ["MilvusAuditLog"]

_PLACEHOLDER = [0.0, 0.0]


class MilvusAuditLog:
    """Append and page through the audit rows of the gallery at ``uri`` (a Milvus gallery URI)."""

    def __init__(self, uri: str | os.PathLike, *, token: str | None = None) -> None:
        from pymilvus import MilvusClient

        client_uri, gallery = parse_milvus_uri(uri)
        self.collection = f"{gallery}_audit"
        token = os.environ.get("MILVUS_TOKEN", "") if token is None else token
        self._client = MilvusClient(client_uri, token=token)
        if not self._client.has_collection(self.collection):
            self._create()

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("seq", DataType.INT64, is_primary=True)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=len(_PLACEHOLDER))
        for name in ("time", "action", "sku"):
            schema.add_field(name, DataType.VARCHAR, max_length=_TEXT_MAX)
        for name in ("key_id", "image_sha256"):
            schema.add_field(name, DataType.VARCHAR, max_length=_TEXT_MAX, nullable=True)
        for name in ("old_price", "new_price"):
            schema.add_field(name, DataType.DOUBLE, nullable=True)
        schema.add_field("sku_hash", DataType.INT64)
        params = self._client.prepare_index_params()
        params.add_index("unused", index_type="FLAT", metric_type="L2")
        self._client.create_collection(self.collection, schema=schema, index_params=params,
                                       consistency_level="Strong")

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self._client.insert(self.collection, [
                {**{f: row.get(f) for f in AUDIT_FIELDS}, "sku": str(row["sku"]), "sku_hash": _hash64(str(row["sku"])),
                 "unused": _PLACEHOLDER} for row in rows])

    def read(self, *, limit: int = 100, offset: int = 0, sku: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """``(total, rows)`` newest first, as :func:`~src.retrieval.gallery_store.read_audit` returns them."""
        where = "seq >= 0" if sku is None else f"sku_hash in {_int_list([_hash64(str(sku))])}"
        rows, pages = [], self._client.query_iterator(self.collection, batch_size=1000, filter=where,
                                                      output_fields=["seq", *AUDIT_FIELDS])
        while batch := pages.next():
            rows += batch
        pages.close()
        rows = sorted((r for r in rows if sku is None or r["sku"] == str(sku)), key=lambda r: -int(r["seq"]))
        return len(rows), [{"seq": int(r["seq"]), **{f: r.get(f) for f in AUDIT_FIELDS}}
                           for r in rows[offset:offset + limit]]

    def close(self) -> None:
        self._client.close()
