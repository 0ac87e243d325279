"""HTTP service: recognise products, price a counter photo, manage the gallery; serves the cashier page.

    POST   /recognize          multipart ``image``            -> recognised, uncertain and unknown boxes
    POST   /checkout           multipart ``image``            -> receipt {items, uncertain, unknown, total, ...}
    GET    /gallery            ?limit=&offset=                -> products (one row per SKU)
    POST   /gallery            multipart ``image`` (1+), ``sku``, ``name``, ``category``, ``price``   [admin]
    PATCH  /gallery            form ``sku``, ``price``         -> sets the price of a product            [admin]
    DELETE /gallery            ?sku=A&sku=B                   -> removes every image of these SKUs     [admin]
    GET    /gallery/history    ?limit=&offset=&sku=           -> audit trail, newest first
    GET    /health                                            -> status, gallery size and version, worker pid
    GET    /                                                  -> the cashier page (static/index.html)

[admin]: ``Authorization: Bearer <admin key>`` (src/service/auth.py): 401 without a token, 403 with a wrong
one, 503 when the service has no admin key configured (the message says how to set one). Everything else
needs no key. CORS is off unless ``cors_origins`` lists origins (the page is served from the same origin).

Several workers/processes on one gallery directory: before each request a worker checks the directory's
CURRENT pointer and reloads when another worker saved a change (Gallery.refresh), and changes hold the
directory's file lock, so every worker answers with a change from the next request it serves on.

Bad uploads get one 4xx with a message and never reach the model: empty (400), larger than
``max_upload_mb`` (413, checked on Content-Length before the body is read, and again on the bytes), more
than ``max_pixels`` (413, read from the header before decoding), not a decodable image (415).

CPU work runs in Starlette's thread pool, so the event loop keeps answering (/health) during a
recognition. Gallery changes go through `Gallery` (one writer lock; add + save atomic on disk), and searches
through GalleryIndex's lock: a request sees the gallery before or after an add, never half of it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from src.recognition.checkout import checkout as price_photo
from src.recognition.gallery import Gallery, ProductImage
from src.recognition.pipeline import RecognitionPipeline
from src.service.auth import HOW_TO_SET, AdminKeys
from src.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
_MULTIPART_SLACK = 64 * 1024  # boundaries and form fields around the file in a multipart body
MAX_SKU_LENGTH = 200


def check_sku(sku: str) -> str:
    """A SKU is an opaque printable string (it never names a file: uploads are stored by content hash)."""
    sku = sku.strip()
    if not sku:
        raise HTTPException(422, "sku must not be blank")
    if len(sku) > MAX_SKU_LENGTH:
        raise HTTPException(422, f"sku is {len(sku)} characters, the limit is {MAX_SKU_LENGTH}")
    if not sku.isprintable():
        raise HTTPException(422, "sku must not contain control characters")
    return sku


def check_price(price: float | None) -> float | None:
    if price is not None and (not math.isfinite(price) or price < 0):
        raise HTTPException(422, f"price must be a finite number >= 0, got {price}")
    return price


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, what: str = "image") -> np.ndarray:
    """Upload bytes -> RGB uint8 array, or an HTTPException with one clear message."""
    if not data:
        raise HTTPException(400, f"empty upload: the file '{what}' has no bytes")
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload too large: '{what}' is {len(data) / 2**20:.1f} MB, "
                                 f"the limit is {max_bytes / 2**20:.1f} MB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header: a decompression bomb is refused before it is decoded
            if w * h > max_pixels:
                raise HTTPException(413, f"image too large: '{what}' is {w}x{h} pixels, the limit is {max_pixels:,}")
            arr = np.asarray(im.convert("RGB"))
    except HTTPException:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise HTTPException(415, f"'{what}' is not a readable image (JPEG, PNG, WebP, BMP...): {err}") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise HTTPException(415, f"'{what}' decodes to an empty image")
    return np.ascontiguousarray(arr)


def admin_key_id(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The key id of a valid admin bearer token, else 503 (no keys configured), 401 (none sent) or 403."""
    keys: AdminKeys = request.app.state.admin_keys
    if not keys:
        raise HTTPException(503, f"gallery changes are disabled: this service has no admin key. {HOW_TO_SET}")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "gallery changes need an admin key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    key_id = keys.identify(token.strip())
    if key_id is None:
        raise HTTPException(403, "the admin key is not valid", headers={"WWW-Authenticate": "Bearer"})
    return key_id


AdminKey = Annotated[str, Depends(admin_key_id)]


def create_app(gallery: Gallery, pipeline: RecognitionPipeline, *, max_upload_mb: float = 10.0,
               max_pixels: int = 40_000_000, upload_dir: str | Path | None = None,
               admin_keys: AdminKeys | None = None, cors_origins: Sequence[str] = ()) -> FastAPI:
    """The service over one gallery and pipeline (``pipeline.index`` must be ``gallery.index``).

    upload_dir: where product images added through POST /gallery are kept (named by content hash), so the
    gallery can be rebuilt with another model; default ``<gallery directory>/uploads``, or memory only for a
    gallery without a directory.
    admin_keys: keys allowed to change the gallery (none: changes are refused with 503).
    cors_origins: origins other pages may call the API from (``["*"]`` for any); none: same origin only."""
    if pipeline.index is not gallery.index:
        raise ValueError("the pipeline must search the gallery's own index")
    max_bytes = int(max_upload_mb * 2**20)
    if upload_dir is None and gallery.directory is not None:
        upload_dir = gallery.directory / "uploads"
    upload_dir = Path(upload_dir) if upload_dir is not None else None
    admin_keys = admin_keys or AdminKeys()
    app = FastAPI(title="Retail product recognition", version="1.0")
    app.state.admin_keys = admin_keys

    @app.middleware("http")
    async def refuse_huge_bodies_and_follow_the_gallery(request: Request, call_next):
        # Before the body is read: a 2 GB upload must not be spooled to disk only to be refused.
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + _MULTIPART_SLACK:
            return JSONResponse({"detail": f"upload too large: {int(length) / 2**20:.1f} MB, "
                                           f"the limit is {max_bytes / 2**20:.1f} MB"}, status_code=413)
        if not request.url.path.startswith("/static"):
            await run_in_threadpool(gallery.refresh)  # another worker's change: reload (one small file read if none)
        return await call_next(request)

    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])


    async def read_image(file: UploadFile, what: str = "image") -> tuple[np.ndarray, bytes]:
        data = await file.read(max_bytes + 1)  # one byte more than allowed tells "too large" apart
        image = await run_in_threadpool(decode_image, data, max_bytes=max_bytes, max_pixels=max_pixels,
                                        what=file.filename or what)
        return image, data

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "gallery_images": len(gallery), "threshold": gallery.index.threshold,
                "fingerprint": gallery.index.fingerprint[:16], "detector": pipeline.detector is not None,
                "gallery_version": gallery.version, "worker_pid": os.getpid(), "changes_enabled": bool(admin_keys)}

    @app.post("/recognize")
    async def recognize(image: Annotated[UploadFile, File(description="RGB photo")]) -> dict:
        pixels, _ = await read_image(image)
        rec = await run_in_threadpool(pipeline.recognize, pixels)
        return rec.to_dict()

    @app.post("/checkout")
    async def checkout(image: Annotated[UploadFile, File(description="counter photo")]) -> dict:
        pixels, _ = await read_image(image)
        return await run_in_threadpool(price_photo, pipeline, pixels)

    @app.get("/gallery")
    def list_gallery(limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                     offset: Annotated[int, Query(ge=0)] = 0) -> dict:
        products = gallery.products()
        return {"images": len(gallery), "products": len(products), "threshold": gallery.index.threshold,
                "offset": offset, "items": products[offset:offset + limit]}

    @app.get("/gallery/history")
    def history(limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
                sku: Annotated[str | None, Query(max_length=MAX_SKU_LENGTH)] = None) -> dict:
        return gallery.history(limit=limit, offset=offset, sku=sku)

    @app.post("/gallery")
    async def add_product(key_id: AdminKey,
                          image: Annotated[list[UploadFile], File(description="one or more product photos")],
                          sku: Annotated[str, Form(min_length=1)],
                          name: Annotated[str | None, Form(max_length=500)] = None,
                          category: Annotated[str | None, Form(max_length=200)] = None,
                          price: Annotated[float | None, Form()] = None) -> dict:
        sku, price = check_sku(sku), check_price(price)
        decoded = [await read_image(f, f"image[{i}]") for i, f in enumerate(image)]  # all valid, or nothing added
        entries = []
        for pixels, data in decoded:
            digest = hashlib.sha256(data).hexdigest()
            path = f"upload:{digest}"
            if upload_dir is not None:
                target = upload_dir / f"{digest}.img"
                if not target.exists():
                    await run_in_threadpool(atomic_write_bytes, target, data)
                path = str(target)
            entries.append(ProductImage(sku, path, name, category, price, image=pixels, sha256=digest))
        return await run_in_threadpool(lambda: gallery.add(entries, key_id=key_id))

    @app.patch("/gallery")
    async def set_price(key_id: AdminKey, sku: Annotated[str, Form(min_length=1)],
                        price: Annotated[float, Form()]) -> dict:
        sku, price = check_sku(sku), check_price(price)
        try:
            return await run_in_threadpool(lambda: gallery.set_price(sku, price, key_id=key_id))
        except KeyError:
            raise HTTPException(404, f"no product with sku {sku} in the gallery") from None

    @app.delete("/gallery")
    async def remove_product(key_id: AdminKey, sku: Annotated[list[str], Query(min_length=1)]) -> dict:
        sku = [check_sku(s) for s in sku]
        removed = await run_in_threadpool(lambda: gallery.remove(sku, key_id=key_id))
        if removed == 0:
            raise HTTPException(404, f"no product with sku {', '.join(sku)} in the gallery")
        return {"removed": removed, "count": len(gallery)}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
