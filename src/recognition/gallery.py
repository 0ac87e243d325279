"""Build, grow and calibrate a product gallery (a GalleryIndex on disk fed by an Embedder).

* Build from an image list (``path label [uid]``, label = SKU id) plus catalogue.json metadata.
* Add products: only images whose ``(sku, image_path)`` is new are read and embedded.
* Remove products by SKU.
* Calibrate the open-set threshold and the look-alike margin on validation images (src/recognition/
  calibration.py); both are stored with the gallery and every calibration is an audit row.

`Gallery` serialises mutations (add/remove/price + save) under one lock and saves after each, so a service that
adds products while it answers searches never loses an add and never shows a half-applied one (searches go
through GalleryIndex's own lock; embedding happens outside both locks).

Several processes on one directory (service workers): every change holds the directory's file lock
(``directory_lock``), first reloads the gallery if another process moved ``CURRENT`` since, then changes and
saves, so concurrent adds from two processes both survive. :meth:`Gallery.refresh` (called by the service
before each request) reloads when ``CURRENT`` moved, in place (``GalleryIndex.take_state``), so a pipeline
holding ``gallery.index`` follows. Every add, remove and price change appends audit rows (UTC time, key id,
SKU, old/new price, image sha256) committed in the same version as the change (:meth:`Gallery.history`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import defaultdict
from datetime import datetime, timezone
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from src.data.images import read_rgb
from src.data.readers import DataFormatError, read_image_list
from src.inference.embedder import Embedder
from src.recognition.calibration import MarginReport, ThresholdReport, choose_margin, choose_threshold
from src.retrieval.gallery_store import current_version, directory_lock, read_audit
from src.retrieval.index import GalleryIndex

__all__ = ["CALIBRATION_SKU", "Gallery", "ProductImage", "embed_entries", "entries_from_image_list", "read_catalogue",
           "removal_audit"]

CALIBRATION_SKU = "*"  # the SKU of the audit rows of threshold and margin calibrations (they concern every SKU)


@dataclass(frozen=True)
class ProductImage:
    """One gallery image of a product. ``image_path`` (with ``sku``) identifies the entry; ``image`` holds the
    pixels when they are already in memory (uploads), else they are read from ``image_path``."""

    sku: str
    image_path: str
    name: str | None = None
    category: str | None = None
    price: float | None = None
    image: np.ndarray | None = None

    sha256: str | None = None  # of the uploaded image file, recorded in the row and the audit trail

    def row(self) -> dict[str, Any]:
        return {"sku": str(self.sku), "name": self.name, "category": self.category, "price": self.price,
                "image_path": self.image_path, "extra": {"sha256": self.sha256} if self.sha256 else {}}

    def pixels(self) -> np.ndarray:
        return self.image if self.image is not None else read_rgb(self.image_path)


def read_catalogue(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """catalogue.json (``{"skus": [{sku_id, name, category, price, ...}]}``) -> ``{sku: {name, category, price}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalogue not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("skus"), list):
        raise DataFormatError(f"{path}: expected an object with a list 'skus'")
    out = {}
    for i, s in enumerate(data["skus"]):
        if not isinstance(s, dict) or "sku_id" not in s:
            raise DataFormatError(f"{path}: skus[{i}] lacks 'sku_id'")
        out[str(s["sku_id"])] = {"name": s.get("name"), "category": s.get("category"), "price": s.get("price")}
    return out


def entries_from_image_list(list_file: str | os.PathLike, catalogue: dict[str, dict] | None = None,
                            root: str | os.PathLike | None = None) -> list[ProductImage]:
    """Image list rows -> ProductImages with the catalogue's name/category/price (label = SKU id)."""
    entries = []
    for s in read_image_list(list_file, root):
        sku = str(s.label)
        meta = {}
        if catalogue is not None:
            if sku not in catalogue:
                raise KeyError(f"{list_file}: SKU {sku} ({s.path}) is not in the catalogue")
            meta = catalogue[sku]
        entries.append(ProductImage(sku, s.path, meta.get("name"), meta.get("category"), meta.get("price")))
    return entries


def embed_entries(embedder: Embedder, entries: Sequence[ProductImage], chunk: int = 256,
                  gallery: bool = False) -> np.ndarray:
    """Embeddings of the entries' images, read ``chunk`` at a time (bounded memory for large lists); with
    ``gallery`` as enrolled into a gallery (Embedder.embed_gallery: through the embedder's gallery views)."""
    embed = embedder.embed_gallery if gallery else embedder.embed
    parts = [embed([e.pixels() for e in entries[i:i + chunk]]) for i in range(0, len(entries), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)


# ---------------------------------------------------------------------------------------------- gallery
def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _audit(action: str, sku: str, key_id: str | None, old_price=None, new_price=None, sha256=None) -> dict:
    return {"time": _utc_now(), "key_id": key_id, "action": action, "sku": str(sku), "old_price": old_price,
            "new_price": new_price, "image_sha256": sha256}


def removal_audit(rows: Sequence[dict[str, Any]], key_id: str | None) -> list[dict[str, Any]]:
    """Audit rows for removing these gallery rows (one per image, with its upload hash when known)."""
    return [_audit("remove", r["sku"], key_id, r["price"], None, (r.get("extra") or {}).get("sha256")) for r in rows]


class Gallery:
    """A GalleryIndex, the embedder that feeds it and (optionally) the directory it is saved to after every
    change.

    Args:
        index: the gallery; its fingerprint must be the embedder's.
        embedder: embeds new product images.
        directory: where :meth:`save` writes (GalleryIndex.save: atomic, CURRENT pointer); None = memory only.
    """

    def __init__(self, index: GalleryIndex, embedder: Embedder, directory: str | os.PathLike | None = None) -> None:
        index.check_compatible(fingerprint=embedder.fingerprint, dim=embedder.dim)
        self.index, self.embedder = index, embedder
        self.directory = Path(directory) if directory is not None else None
        self._write_lock = threading.Lock()
        self._memory_audit: list[dict[str, Any]] = []  # the trail of a gallery without a directory
        self._set_keys()

    def _set_keys(self) -> None:
        self._keys = {(row["sku"], row["image_path"]) for row in (self.index.metadata(int(i)) for i in self.index.ids)}

    # -------------------------------------------------------------------- construction
    @classmethod
    def create(cls, embedder: Embedder, directory: str | os.PathLike | None = None, *, factory: str = "Flat",
               threshold: float | None = None, **index_kwargs) -> "Gallery":
        """An empty gallery (not saved until the first change or :meth:`save`)."""
        index = GalleryIndex(embedder.dim, embedder.fingerprint, factory=factory, threshold=threshold, **index_kwargs)
        return cls(index, embedder, directory)

    @classmethod
    def open(cls, directory: str | os.PathLike, embedder: Embedder) -> "Gallery":
        """Load a saved gallery; IncompatibleIndexError if it was built with another model/preprocessing."""
        index = GalleryIndex.load(directory, fingerprint=embedder.fingerprint, dim=embedder.dim)
        return cls(index, embedder, directory)

    # -------------------------------------------------------------------- mutation
    def save(self, audit: Sequence[dict[str, Any]] = ()) -> None:
        if self.directory is not None:
            self.index.save(self.directory, audit=audit)
        else:
            self._memory_audit.extend(audit)

    @property
    def version(self) -> str | None:
        """The on-disk version this process holds (``GalleryIndex.version``)."""
        return self.index.version

    @contextlib.contextmanager
    def _changing(self):
        """The writer lock of this process, the directory's file lock, and this process's state brought up to
        the disk's (another process may have saved since): a read-modify-write never loses another's change."""
        with self._write_lock:
            if self.directory is None:
                yield
                return
            with directory_lock(self.directory):
                self._reload_if_moved()
                yield

    def _reload_if_moved(self) -> bool:
        """Reload from disk if CURRENT names another version than ours; caller holds the write lock and the
        directory lock (shared or exclusive)."""
        name = current_version(self.directory)
        if name is None or name == self.index.version:
            return False
        fresh = GalleryIndex.load(self.directory, fingerprint=self.embedder.fingerprint, dim=self.embedder.dim)
        self.index.take_state(fresh)
        self._set_keys()
        return True

    def refresh(self) -> bool:
        """Follow changes saved by other processes: if ``CURRENT`` moved, reload it (in place, atomically for
        searches). Cheap when nothing moved (one small file read). When it moved, the caller waits for this
        process's reload or change in progress, so a request that starts after another worker answered a change
        is served the changed gallery (not the old one while a sibling thread reloads). Returns whether it
        reloaded. Never call it while holding the write lock (a change syncs itself first)."""
        if self.directory is None or current_version(self.directory) in (None, self.index.version):
            return False
        with self._write_lock, directory_lock(self.directory, exclusive=False):
            return self._reload_if_moved()

    def _new(self, entries: Iterable[ProductImage]) -> list[ProductImage]:
        seen, out = set(), []
        for e in entries:
            key = (str(e.sku), e.image_path)
            if key not in self._keys and key not in seen:
                seen.add(key)
                out.append(e)
        return out

    def _stored(self, skus: set[str]) -> dict[str, dict[str, Any]]:
        """The stored row (name, category, price) of each of these SKUs that the gallery holds."""
        out: dict[str, dict[str, Any]] = {}
        for i in self.index.ids:
            row = self.index.metadata(int(i))
            if row["sku"] in skus:
                out.setdefault(row["sku"], row)
        return out

    def add(self, entries: Sequence[ProductImage], *, key_id: str | None = None) -> dict[str, Any]:
        """Embed and add the entries not in the gallery yet, then save. Returns ``{added, skipped, count,
        prices_changed}``.

        A product has one price: an entry whose price differs from its SKU's stored one changes the price of
        every image of that SKU (an audited price change, also when the image itself is already there); a new
        image without price/name/category takes its SKU's stored ones. ``key_id`` is recorded in the audit
        trail. If saving fails the change is taken back out, so memory never holds what the disk lacks."""
        entries = list(entries)
        todo = self._new(entries)  # unlocked pre-filter: embedding is the slow part, do not embed known images
        vectors = embed_entries(self.embedder, todo, gallery=True)
        with self._changing():
            keep = [i for i, e in enumerate(todo) if (str(e.sku), e.image_path) not in self._keys]  # lost a race?
            todo, vectors = [todo[i] for i in keep], vectors[keep]
            stored = self._stored({str(e.sku) for e in entries})
            new_price = {str(e.sku): float(e.price) for e in entries if e.price is not None}
            changes = {s: (stored[s]["price"], p) for s, p in new_price.items()
                       if s in stored and stored[s]["price"] != p}
            todo = [replace(e, name=e.name if e.name is not None else stored[str(e.sku)]["name"],
                            category=e.category if e.category is not None else stored[str(e.sku)]["category"],
                            price=e.price if e.price is not None else stored[str(e.sku)]["price"])
                    if str(e.sku) in stored else e for e in todo]
            audit = [_audit("price", s, key_id, old, new) for s, (old, new) in changes.items()]
            audit += [_audit("add", e.sku, key_id, stored.get(str(e.sku), {}).get("price"), e.price, e.sha256)
                      for e in todo]
            ids = np.zeros(0, np.int64)
            try:
                for s, (_, new) in changes.items():
                    self.index.update(skus=[s], price=new)
                if todo:
                    ids = self.index.add(vectors, [e.row() for e in todo])
                if audit:
                    self.save(audit)
            except BaseException:
                self.index.remove(ids=ids)
                for s, (old, _) in changes.items():
                    self.index.update(skus=[s], price=old)
                raise
            self._keys |= {(str(e.sku), e.image_path) for e in todo}
            return {"added": len(todo), "skipped": len(entries) - len(todo), "count": len(self.index),
                    "prices_changed": sorted(changes)}

    def set_price(self, sku: str, price: float | None, *, key_id: str | None = None) -> dict[str, Any]:
        """Set the price of every image of ``sku`` (KeyError if the gallery has none), audited, then save.
        Returns ``{sku, old_price, new_price, images}``."""
        sku = str(sku)
        price = None if price is None else float(price)
        with self._changing():
            stored = self._stored({sku})
            if sku not in stored:
                raise KeyError(sku)
            old = stored[sku]["price"]
            n = self.index.update(skus=[sku], price=price)
            if old != price:
                try:
                    self.save([_audit("price", sku, key_id, old, price)])
                except BaseException:
                    self.index.update(skus=[sku], price=old)
                    raise
            return {"sku": sku, "old_price": old, "new_price": price, "images": n}

    def remove(self, skus: Iterable[str], *, key_id: str | None = None) -> int:
        """Remove every image of these SKUs, then save (restored in memory if saving fails)."""
        skus = {str(s) for s in ([skus] if isinstance(skus, str) else skus)}
        with self._changing():
            ids, vectors = self.index.vectors()
            rows = {int(i): self.index.metadata(int(i)) for i in ids}
            gone = [i for i, r in rows.items() if r["sku"] in skus]
            if not gone:
                return 0
            n = self.index.remove(ids=gone)
            audit = removal_audit([rows[i] for i in gone], key_id)
            try:
                self.save(audit)
            except BaseException:
                pos = np.isin(ids, gone)
                self.index.add(vectors[pos], [{k: rows[int(i)][k] for k in rows[int(i)] if k != "id"}
                                              for i in ids[pos]])
                raise
            self._keys -= {(rows[i]["sku"], rows[i]["image_path"]) for i in gone}
            return n

    def calibrate(self, val_entries: Sequence[ProductImage], target_far: float, *,
                  key_id: str | None = None) -> ThresholdReport:
        """Choose the threshold on validation images (see :func:`choose_threshold`), store it and save (with an
        audit row: action ``threshold``, old and new value in the price columns)."""
        vectors = embed_entries(self.embedder, val_entries)
        with self._changing():
            report = choose_threshold(self.index, vectors, [str(e.sku) for e in val_entries], target_far)
            self._store_setting("threshold", report.threshold, key_id)
        return report

    def calibrate_margin(self, val_entries: Sequence[ProductImage], target_wrong: float, *,
                         key_id: str | None = None) -> MarginReport:
        """Choose the look-alike margin on validation images at the stored threshold (:func:`choose_margin`),
        store it and save with an audit row (action ``margin``). Calibrate the threshold first."""
        vectors = embed_entries(self.embedder, val_entries)
        with self._changing():
            report = choose_margin(self.index, vectors, [str(e.sku) for e in val_entries], target_wrong)
            self._store_setting("margin", report.margin, key_id)
        return report

    def _store_setting(self, name: str, value: float, key_id: str | None) -> None:
        """Set the index's ``threshold`` or ``margin`` and save with an audit row (old and new value in the price
        columns); put back if saving fails. The caller holds :meth:`_changing`."""
        previous = getattr(self.index, name)
        setter = getattr(self.index, f"set_{name}")
        setter(value)
        try:
            self.save([_audit(name, CALIBRATION_SKU, key_id, previous, value)])
        except BaseException:
            setter(previous)
            raise

    # -------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.index)

    def history(self, limit: int = 100, offset: int = 0, sku: str | None = None) -> dict[str, Any]:
        """The audit trail, newest first: ``{total, offset, items: [{seq, time, key_id, action, sku,
        old_price, new_price, image_sha256}]}`` (``sku`` filters)."""
        if self.directory is None:
            rows = [{"seq": i + 1, **r} for i, r in enumerate(self._memory_audit)]
            rows = [r for r in rows if sku is None or r["sku"] == sku][::-1]
            return {"total": len(rows), "offset": offset, "items": rows[offset:offset + limit]}
        with directory_lock(self.directory, exclusive=False):  # no save deletes the version while we read it
            total, rows = read_audit(self.directory, limit=limit, offset=offset, sku=sku)
        return {"total": total, "offset": offset, "items": rows}

    def products(self) -> list[dict[str, Any]]:
        """One row per SKU: ``{sku, name, category, price, images}`` sorted by SKU."""
        by_sku: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = defaultdict(int)
        for i in self.index.ids:
            try:
                row = self.index.metadata(int(i))
            except KeyError:  # removed by another thread since `ids` was copied
                continue
            by_sku.setdefault(row["sku"], {k: row[k] for k in ("sku", "name", "category", "price")})
            counts[row["sku"]] += 1
        return [{**by_sku[s], "images": counts[s]} for s in sorted(by_sku, key=lambda s: (len(s), s))]
