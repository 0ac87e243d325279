"""Where a :class:`~src.retrieval.index.GalleryIndex` lives on disk: versioned directories, saved atomically.

Only numpy, faiss, sqlite3, the standard library and src/utils/io.py (fsync and atomic writes).

Directory layout written by :func:`save_version` (``rename`` cannot atomically replace a non-empty directory,
so a pointer file is swapped instead)::

    <dir>/CURRENT                 name of the live version, replaced atomically (src/utils/io.py)
    <dir>/v-<time>-<uuid>/        manifest.json, index*.faiss, vectors.npy, ids.npy, metadata.sqlite
    <dir>/.tmp-<uuid>/            a save in progress (removed by the next save if a crash left it)
    <dir>/LOCK                    flock target of :func:`directory_lock` (processes sharing the directory)

A save writes and fsyncs a complete version in a temp directory, renames it to ``v-...``, then swaps
``CURRENT``. A crash at any point leaves ``CURRENT`` naming a complete older version.

``manifest.json`` holds the index settings (:data:`SETTINGS`), ``next_id``, ``count`` (live entries), the faiss
files (one per shard: faiss cannot serialise IndexShards), every file's size (checked on load, so a truncated
file is refused by name) and ``audit_rows``. ``vectors.npy``/``ids.npy`` are the live entries, row-aligned.
``metadata.sqlite`` has the tables ``products`` (id, :data:`~src.retrieval.index_base.METADATA_FIELDS`,
``extra`` as JSON; unique ``(sku, image_path)``), ``tombstones`` (ids still in the faiss index but removed)
and ``audit``.

Audit trail: ``metadata.sqlite`` also holds an append-only ``audit`` table (:data:`AUDIT_FIELDS`). Each save
copies the previous version's rows and appends the ones passed to :func:`save_version`, so a change and
the rows recording it become visible in the same ``CURRENT`` swap (both or neither). Versions written before
the table existed read as an empty history; their next save creates it.

Several processes (e.g. service workers) may share one directory: writers hold ``directory_lock(dir)``
(exclusive) around load-if-moved -> change -> save, readers reload under the shared lock when
:func:`current_version` no longer names the version they hold (``GalleryIndex.version``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import faiss
import numpy as np

from src.utils import io as atomic_io

__all__ = ["AUDIT_FIELDS", "FORMAT_VERSION", "LOCK_FILE", "SETTINGS", "StoredGallery", "current_version", "settings_of",
           "directory_lock", "read_audit", "read_manifest", "read_version", "save_version"]

# One audit row: UTC ISO time, who (an API key id, never the key), add/remove/price, the SKU, prices, image hash.
AUDIT_FIELDS = ("time", "key_id", "action", "sku", "old_price", "new_price", "image_sha256")
LOCK_FILE = "LOCK"
FORMAT_VERSION = 1
# GalleryIndex constructor arguments kept in the manifest (in its key order).
SETTINGS = ("fingerprint", "dim", "factory", "threshold", "margin", "num_shards", "nprobe", "ef_search",
            "chunk_size")
LATER_SETTINGS = {"margin": None}  # settings added after FORMAT_VERSION 1: their value in older manifests


def settings_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SETTINGS` of a manifest (older manifests lack :data:`LATER_SETTINGS`: their defaults)."""
    return {key: manifest[key] if key in manifest else LATER_SETTINGS[key] for key in SETTINGS}


@dataclass
class StoredGallery:
    """The contents of one version: ``settings`` (:data:`SETTINGS`), the faiss index as one index per shard,
    the live entries' ``vectors``/``ids`` (row-aligned), their metadata rows by id, the tombstoned ids and the
    next id to hand out."""

    settings: dict[str, Any]
    indexes: list[faiss.Index]
    vectors: np.ndarray
    ids: np.ndarray
    meta: dict[int, dict[str, Any]]
    tombstones: set[int]
    next_id: int


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


def _write_sqlite(path: Path, stored: StoredGallery, previous: Path | None = None, audit: Sequence[tuple] = ()) -> int:
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
                for i, r in stored.meta.items()
            ),
        )
        conn.executemany("INSERT INTO tombstones VALUES (?)", ((i,) for i in sorted(stored.tombstones)))
        n_audit = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
        conn.commit()
    finally:
        conn.close()
    return n_audit


def _write_version(tmp: Path, stored: StoredGallery, previous: Path | None = None, audit: Sequence[tuple] = ()) -> None:
    """Write every file of one version into ``tmp`` and fsync them; the manifest comes last."""
    index_files = [f"index.shard{i}.faiss" if len(stored.indexes) > 1 else "index.faiss"
                   for i in range(len(stored.indexes))]
    for name, sub in zip(index_files, stored.indexes):
        faiss.write_index(sub, str(tmp / name))
    _save_npy(tmp / "vectors.npy", stored.vectors)
    _save_npy(tmp / "ids.npy", stored.ids)
    n_audit = _write_sqlite(tmp / "metadata.sqlite", stored, previous, audit)
    names = [*index_files, "vectors.npy", "ids.npy", "metadata.sqlite"]
    for name in names:
        atomic_io.fsync_file(tmp / name)
    manifest = {
        "format_version": FORMAT_VERSION,
        **{key: stored.settings[key] for key in SETTINGS},
        "next_id": stored.next_id,
        "count": int(len(stored.ids)),
        "index_files": index_files,
        "file_sizes": {name: (tmp / name).stat().st_size for name in names},
        "audit_rows": n_audit,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    atomic_io.fsync_file(tmp / "manifest.json")
    atomic_io.fsync_dir(tmp)


def save_version(directory: str | os.PathLike, stored: StoredGallery,
                 audit: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Save ``stored`` atomically into ``directory`` (created if missing) as its new live version; return the
    version directory.

    ``audit``: rows (:data:`AUDIT_FIELDS`) appended to the trail copied from the live version, committed with
    this version. Keeps the previous version for readers that already opened it; older versions and temp
    files left by crashed saves are removed. Processes sharing the directory hold :func:`directory_lock` around
    their read-modify-write; without it a second process saving concurrently may have its temp directory
    cleaned away (its save then fails; the live version is never damaged). Threads sharing one GalleryIndex
    are serialised by its lock."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    audit_rows = [_audit_row(r, i) for i, r in enumerate(audit)]
    if any(e.name != LOCK_FILE for e in root.iterdir()) and not (root / "CURRENT").exists():
        raise ValueError(f"{root} is not empty and holds no GalleryIndex (no CURRENT file); refusing to write")
    previous = (root / "CURRENT").read_text().strip() if (root / "CURRENT").exists() else None
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_version(tmp, stored, root / previous / "metadata.sqlite" if previous else None, audit_rows)
        version = root / f"v-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        os.rename(tmp, version)
        atomic_io.fsync_dir(root)
        atomic_io.atomic_write_text(root / "CURRENT", version.name + "\n")  # the commit point
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Best-effort cleanup of older versions and crashed saves (temp directories, CURRENT temp files: the
    # ".CURRENT." ones of src/utils/io.py, "CURRENT.tmp-" from before it wrote the pointer).
    for entry in root.iterdir():
        stale_version = entry.name.startswith("v-") and entry.name not in (version.name, previous)
        if stale_version or entry.name.startswith((".tmp-", ".CURRENT.", "CURRENT.tmp-")):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    return version


def read_manifest(directory: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(version directory, manifest)`` of the version named by ``<directory>/CURRENT``, after checking that
    every file the manifest lists has its recorded size."""
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
    return version, manifest


def read_version(version: Path, manifest: Mapping[str, Any]) -> StoredGallery:
    """The contents of a version directory whose manifest :func:`read_manifest` returned; ValueError naming the
    directory if its counts disagree."""
    indexes = [faiss.read_index(str(version / f)) for f in manifest["index_files"]]
    vectors = np.load(version / "vectors.npy", allow_pickle=False)
    ids = np.load(version / "ids.npy", allow_pickle=False)
    meta: dict[int, dict[str, Any]] = {}
    conn = sqlite3.connect(f"file:{version / 'metadata.sqlite'}?mode=ro", uri=True)
    try:
        for entry_id, sku, name, category, price, image_path, extra in conn.execute(
            "SELECT id, sku, name, category, price, image_path, extra FROM products"
        ):
            meta[entry_id] = {"sku": sku, "name": name, "category": category, "price": price,
                              "image_path": image_path, "extra": json.loads(extra)}
        tombstones = {i for (i,) in conn.execute("SELECT id FROM tombstones")}
    finally:
        conn.close()
    expected = manifest["count"]
    if not (len(ids) == len(vectors) == len(meta) == expected):
        raise ValueError(
            f"{version}: inconsistent counts: {len(ids)} ids, {len(vectors)} vectors, "
            f"{len(meta)} metadata rows, manifest says {expected}"
        )
    ntotal = sum(index.ntotal for index in indexes)
    if ntotal != expected + len(tombstones):
        raise ValueError(
            f"{version}: faiss index holds {ntotal} vectors, expected {expected} live + {len(tombstones)} tombstoned"
        )
    return StoredGallery(settings=settings_of(manifest), indexes=indexes, vectors=vectors,
                         ids=ids, meta=meta, tombstones=tombstones, next_id=manifest["next_id"])
