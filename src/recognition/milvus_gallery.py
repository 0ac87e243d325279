"""A Gallery whose products live in a Milvus collection: one gallery for many service processes, replicas and
stores (`--index milvus://db.shop:19530#store_17`, or a Milvus Lite file `--index gallery.db`).

The collection *is* the gallery (src/retrieval/milvus_index.py): every process searches the same rows, so a
product added through one replica is found by every replica's next search, with no version to follow.
:meth:`MilvusGallery.refresh` (the service calls it before each request) reads back the threshold another
process may have calibrated. The audit trail is the collection ``<name>_audit`` (src/retrieval/milvus_audit.py).

Changes go through one writer process at a time (ids come from a counter stored with the collection): run the
replica that takes gallery changes with one worker, or put an outside lock around writers; checkout replicas
may be many. The Faiss directory (`--index <folder>`) stays the default and has no such limit on one machine.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from src.inference.embedder import Embedder
from src.recognition.gallery import Gallery
from src.retrieval.milvus_audit import MilvusAuditLog
from src.retrieval.milvus_index import MilvusGalleryIndex

__all__ = ["MilvusGallery", "is_milvus_location", "open_gallery"]

MILVUS_SCHEMES = ("milvus://", "milvus+https://", "http://", "https://")


def is_milvus_location(location: str | os.PathLike) -> bool:
    """A Milvus URI or a Milvus Lite ``.db`` file (optionally ``#collection``), not a gallery folder."""
    text = os.fspath(location)
    return text.startswith(MILVUS_SCHEMES) or text.partition("#")[0].endswith(".db")


class MilvusGallery(Gallery):
    """:class:`Gallery` over a :class:`MilvusGalleryIndex`, its audit trail in Milvus too."""

    def __init__(self, index: MilvusGalleryIndex, embedder: Embedder, audit: MilvusAuditLog) -> None:
        super().__init__(index, embedder, None)
        self.audit = audit

    @classmethod
    def connect(cls, uri: str | os.PathLike, embedder: Embedder, *, threshold: float | None = None,
                index_type: str = "FLAT", **index_kwargs: Any) -> "MilvusGallery":
        """The gallery collection at ``uri`` (created if missing, for this embedder); IncompatibleIndexError if
        it was built with another model or preprocessing."""
        index = MilvusGalleryIndex(uri, embedder.dim, embedder.fingerprint, threshold=threshold,
                                   index_type=index_type, **index_kwargs)
        return cls(index, embedder, MilvusAuditLog(uri))

    @property
    def version(self) -> str | None:
        return self.index.location  # no versions: the collection is the live gallery

    def save(self, audit=()) -> None:
        self.audit.append(list(audit))  # the change itself is in Milvus already

    @contextlib.contextmanager
    def _changing(self):
        with self._write_lock:
            self.index.reload()  # the id counter and threshold as the collection has them now
            yield

    def refresh(self) -> bool:
        self.index.reload()
        return False

    def history(self, limit: int = 100, offset: int = 0, sku: str | None = None) -> dict[str, Any]:
        total, rows = self.audit.read(limit=limit, offset=offset, sku=sku)
        return {"total": total, "offset": offset, "items": rows}

    def close(self) -> None:
        self.index.close()
        self.audit.close()


def open_gallery(location: str | os.PathLike, embedder: Embedder, *, factory: str = "Flat") -> Gallery:
    """The gallery at ``location``: a Milvus URI / ``.db`` file (:class:`MilvusGallery`, created if missing)
    or a saved gallery folder (:meth:`Gallery.open`)."""
    if is_milvus_location(location):
        return MilvusGallery.connect(location, embedder, index_type="FLAT" if factory == "Flat" else factory)
    return Gallery.open(location, embedder)
