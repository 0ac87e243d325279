"""HTTP service: recognise products, price a counter photo, manage the gallery; serves the cashier page.

    POST   /recognize          multipart ``image``            -> recognised boxes + unknown boxes
    POST   /checkout           multipart ``image``            -> receipt {items, unknown, total, ...}
    GET    /gallery            ?limit=&offset=                -> products (one row per SKU)
    POST   /gallery            multipart ``image`` (1+), ``sku``, ``name``, ``category``, ``price``
    DELETE /gallery            ?sku=A&sku=B                   -> removes every image of these SKUs
    GET    /health                                            -> status, gallery size, threshold
    GET    /                                                  -> the cashier page (static/index.html)

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
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from src.recognition.checkout import checkout as price_photo
from src.recognition.gallery import Gallery, ProductImage
from src.recognition.pipeline import RecognitionPipeline
from src.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
_MULTIPART_SLACK = 64 * 1024  # boundaries and form fields around the file in a multipart body


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


def create_app(gallery: Gallery, pipeline: RecognitionPipeline, *, max_upload_mb: float = 10.0,
               max_pixels: int = 40_000_000, upload_dir: str | Path | None = None) -> FastAPI:
    """The service over one gallery and pipeline (``pipeline.index`` must be ``gallery.index``).

    upload_dir: where product images added through POST /gallery are kept (named by content hash), so the
    gallery can be rebuilt with another model; default ``<gallery directory>/uploads``, or memory only for a
    gallery without a directory."""
    if pipeline.index is not gallery.index:
        raise ValueError("the pipeline must search the gallery's own index")
    max_bytes = int(max_upload_mb * 2**20)
    if upload_dir is None and gallery.directory is not None:
        upload_dir = gallery.directory / "uploads"
    upload_dir = Path(upload_dir) if upload_dir is not None else None
    app = FastAPI(title="Retail product recognition", version="1.0")

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next):
        # Before the body is read: a 2 GB upload must not be spooled to disk only to be refused.
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + _MULTIPART_SLACK:
            return JSONResponse({"detail": f"upload too large: {int(length) / 2**20:.1f} MB, "
                                           f"the limit is {max_bytes / 2**20:.1f} MB"}, status_code=413)
        return await call_next(request)

    async def read_image(file: UploadFile, what: str = "image") -> tuple[np.ndarray, bytes]:
        data = await file.read(max_bytes + 1)  # one byte more than allowed tells "too large" apart
        image = await run_in_threadpool(decode_image, data, max_bytes=max_bytes, max_pixels=max_pixels,
                                        what=file.filename or what)
        return image, data

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "gallery_images": len(gallery), "threshold": gallery.index.threshold,
                "fingerprint": gallery.index.fingerprint[:16], "detector": pipeline.detector is not None}

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

    @app.post("/gallery")
    async def add_product(image: Annotated[list[UploadFile], File(description="one or more product photos")],
                          sku: Annotated[str, Form(min_length=1, max_length=200)],
                          name: Annotated[str | None, Form(max_length=500)] = None,
                          category: Annotated[str | None, Form(max_length=200)] = None,
                          price: Annotated[float | None, Form()] = None) -> dict:
        sku = sku.strip()
        if not sku:
            raise HTTPException(422, "sku must not be blank")
        if price is not None and (not math.isfinite(price) or price < 0):
            raise HTTPException(422, f"price must be a finite number >= 0, got {price}")
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
            entries.append(ProductImage(sku, path, name, category, price, image=pixels))
        return await run_in_threadpool(gallery.add, entries)

    @app.delete("/gallery")
    async def remove_product(sku: Annotated[list[str], Query(min_length=1)]) -> dict:
        removed = await run_in_threadpool(gallery.remove, sku)
        if removed == 0:
            raise HTTPException(404, f"no product with sku {', '.join(sku)} in the gallery")
        return {"removed": removed, "count": len(gallery)}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
