"""`python -m src.service --index DIR --embedder CKPT [--detector CKPT] [--port 8000] [--workers N]`: the service
and the cashier page.

A missing or empty --index folder becomes an empty gallery (add products on the page or with POST /gallery).
Gallery changes need an admin key: RECOGNITION_ADMIN_KEY=<key> or --admin-key-file FILE ('<key id>:<key>'
lines); without one they are refused (503) and everything else works. --workers N runs N processes on one
port; each follows the gallery folder (a change through one is served by all from their next request), and
`python -m src.recognize add/remove` may change the folder while the service runs (the same file lock).
--index milvus://host:19530#name (or a Milvus Lite gallery.db) serves one Milvus collection shared by every
replica instead (src/recognition/milvus_gallery.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


ENV_ARGS = "RECOGNITION_SERVICE_ARGS"  # build_app's arguments for worker processes (JSON)
ENV_CORS = "RECOGNITION_CORS_ORIGINS"  # comma-separated origins allowed to call the API from other pages


def build_app(index: str, embedder: str, detector: str | None = None, *, det_threshold: float = 0.5,
              whole_image: str = "always", factory: str = "Flat", max_upload_mb: float = 10.0, device: str = "cpu",
              admin_keys=None, admin_key_file: str | None = None, cors_origins: list[str] | None = None,
              threads: int | None = None):
    """The app over ``index`` (created if missing). ``admin_keys`` (AdminKeys) else the key file /
    environment (src/service/auth.py); ``cors_origins`` else RECOGNITION_CORS_ORIGINS (default none);
    ``threads``: intra-op threads of torch and of the ONNX Runtime sessions (default: theirs)."""
    from src.inference.detector import load_detector
    from src.inference.embedder import load_embedder
    from src.recognition.milvus_gallery import MilvusGallery, is_milvus_location
    from src.recognition.pipeline import RecognitionPipeline
    from src.service.app import create_app
    from src.service.auth import load_admin_keys

    if admin_keys is None:
        admin_keys = load_admin_keys(admin_key_file)
    if cors_origins is None:
        cors_origins = [o.strip() for o in os.environ.get(ENV_CORS, "").split(",") if o.strip()]
    if threads:
        import torch

        torch.set_num_threads(threads)
    emb = load_embedder(embedder, device=device, threads=threads)
    if is_milvus_location(index):  # one collection shared by every process and replica
        gallery = MilvusGallery.connect(index, emb, index_type="FLAT" if factory == "Flat" else factory)
    else:
        gallery = _folder_gallery(Path(index), emb, factory)
    det = load_detector(detector, score_threshold=det_threshold, device=device, threads=threads) \
        if detector else None
    pipeline = RecognitionPipeline(emb, gallery.index, det, whole_image=whole_image)
    return create_app(gallery, pipeline, max_upload_mb=max_upload_mb, admin_keys=admin_keys,
                      cors_origins=cors_origins)


def _folder_gallery(directory: Path, embedder, factory: str):
    from src.recognition.gallery import Gallery
    from src.retrieval.gallery_store import LOCK_FILE, directory_lock

    if directory.exists() and any(e.name != LOCK_FILE for e in directory.iterdir()) \
            and not (directory / "CURRENT").is_file():
        raise SystemExit(f"--index {directory} is not empty and holds no gallery (no CURRENT file)")
    with directory_lock(directory):  # several workers starting at once create one gallery
        if (directory / "CURRENT").is_file():
            return Gallery.open(directory, embedder)
        gallery = Gallery.create(embedder, directory, factory=factory)
        gallery.save()  # CURRENT exists from now on; uploads/ may live next to the versions
        return gallery


def app_from_env():
    """uvicorn's app factory in each worker process (``--workers N``): build_app(**JSON in RECOGNITION_SERVICE_ARGS)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return build_app(**json.loads(os.environ[ENV_ARGS]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="gallery folder (created if missing), or a Milvus collection: "
                   "milvus://host:19530#name or a Milvus Lite file gallery.db (src/recognition/milvus_gallery.py)")
    p.add_argument("--embedder", required=True, help="embedder .ckpt (src.train) or .onnx (scripts/export_onnx.py)")
    p.add_argument("--detector", help="detector .ckpt or .onnx; without it only the whole photo is recognised")
    p.add_argument("--det-threshold", type=float, default=0.5, help="detector score threshold")
    p.add_argument("--whole-image", default="always", choices=("always", "fallback", "never"))
    p.add_argument("--factory", default="Flat", help="index type for a new gallery: faiss (Flat, HNSW32, ...) or "
                   "Milvus (FLAT, HNSW, ...)")
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--admin-key-file", help="'<key id>:<key>' lines allowed to change the gallery (or set "
                                            "RECOGNITION_ADMIN_KEY / RECOGNITION_ADMIN_KEY_FILE)")
    p.add_argument("--cors-origin", action="append", default=None,
                   help="an origin whose pages may call the API (repeatable; default: none, same origin only)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each loads the models)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per worker for torch and ONNX Runtime (default: theirs)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from src.service.auth import KeyFileError, load_admin_keys

    try:
        keys = load_admin_keys(args.admin_key_file)  # a bad key file stops the start, not the first change
    except KeyFileError as err:
        raise SystemExit(str(err)) from None
    if not keys:
        logging.warning("no admin key: gallery changes are refused. Set RECOGNITION_ADMIN_KEY or --admin-key-file")
    kwargs = {"index": args.index, "embedder": args.embedder, "detector": args.detector,
              "det_threshold": args.det_threshold, "whole_image": args.whole_image, "factory": args.factory,
              "max_upload_mb": args.max_upload_mb, "admin_key_file": args.admin_key_file,
              "cors_origins": args.cors_origin, "threads": args.threads}
    import uvicorn

    print(f"cashier page: http://{args.host}:{args.port}/", flush=True)
    if args.workers > 1:
        os.environ[ENV_ARGS] = json.dumps(kwargs)
        uvicorn.run("src.service.__main__:app_from_env", factory=True, workers=args.workers, host=args.host,
                    port=args.port, log_level="info")
        return
    uvicorn.run(build_app(**kwargs), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
