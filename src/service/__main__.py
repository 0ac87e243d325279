"""`python -m src.service --index DIR --embedder CKPT [--detector CKPT] [--port 8000]`: the service + page.

A missing or empty --index folder becomes an empty gallery (add products on the page or with POST /gallery).
The service owns the folder while it runs: add products through it, not with `python -m src.recognize add`
at the same time (two writing processes would each save their own state)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def build_app(index: str, embedder: str, detector: str | None = None, *, det_threshold: float = 0.5,
              whole_image: str = "always", factory: str = "Flat", max_upload_mb: float = 10.0, device: str = "cpu"):
    from src.recognition.detector import Detector
    from src.recognition.embedder import Embedder
    from src.recognition.gallery import Gallery
    from src.recognition.pipeline import RecognitionPipeline
    from src.service.app import create_app

    emb = Embedder.from_checkpoint(embedder, device=device)
    directory = Path(index)
    if (directory / "CURRENT").is_file():
        gallery = Gallery.open(directory, emb)
    else:
        if directory.exists() and any(directory.iterdir()):
            raise SystemExit(f"--index {directory} is not empty and holds no gallery (no CURRENT file)")
        gallery = Gallery.create(emb, directory, factory=factory)
        gallery.save()  # CURRENT exists from now on; uploads/ may live next to the versions
    det = Detector.from_checkpoint(detector, score_threshold=det_threshold, device=device) if detector else None
    pipeline = RecognitionPipeline(emb, gallery.index, det, whole_image=whole_image)
    return create_app(gallery, pipeline, max_upload_mb=max_upload_mb)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m src.service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="gallery folder (GalleryIndex layout); created if missing")
    p.add_argument("--embedder", required=True, help="EmbeddingSystem checkpoint (.ckpt from src.train)")
    p.add_argument("--detector", help="DetectionSystem checkpoint; without it only the whole photo is recognised")
    p.add_argument("--det-threshold", type=float, default=0.5, help="detector score threshold")
    p.add_argument("--whole-image", default="always", choices=("always", "fallback", "never"))
    p.add_argument("--factory", default="Flat", help="faiss index type for a new gallery (Flat, HNSW32, ...)")
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = build_app(args.index, args.embedder, args.detector, det_threshold=args.det_threshold,
                    whole_image=args.whole_image, factory=args.factory, max_upload_mb=args.max_upload_mb)
    import uvicorn

    print(f"cashier page: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
