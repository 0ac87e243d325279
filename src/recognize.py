"""Recognition command line: `python -m src.recognize <command> ...` (see `--help` of each command).

    build       new gallery from an image list (+ catalogue.json); optional threshold for a target FAR
    add         add product images (only new (sku, image) pairs are embedded)
    remove      remove every image of some SKUs
    calibrate   choose and store the open-set threshold on validation images for a target FAR (and, with
                --target-wrong, the look-alike margin: closer matches are listed as uncertain, not priced)
    search      recognise the products in one photo (JSON)
    checkout    price one counter photo (JSON receipt)
    match-live  image<->video matching on a live-stream folder -> result.json (and its score if known)

argparse, not Hydra: these are operations on files (a gallery folder, a photo, checkpoints) with a few flags;
the model configuration already travels inside each checkpoint. Hydra would add a run directory and config
composition per call and nothing we use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

log = logging.getLogger("src.recognize")


def _embedder(args):
    from src.inference.embedder import load_embedder

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return load_embedder(args.embedder, device=args.device, batch_size=args.batch_size, threads=args.threads)


def _entries(list_file: str, root: str | None, catalogue: str | None):
    from src.recognition.gallery import entries_from_image_list, read_catalogue

    return entries_from_image_list(list_file, read_catalogue(catalogue) if catalogue else None, root)


def _print(obj) -> None:
    json.dump(obj, sys.stdout, indent=1, ensure_ascii=False, default=float)
    sys.stdout.write("\n")


def cmd_build(args) -> None:
    from src.recognition.gallery import Gallery
    from src.recognition.milvus_gallery import MilvusGallery, is_milvus_location

    if is_milvus_location(args.index):  # a Milvus collection is written as it grows (no version to swap in)
        gallery = MilvusGallery.connect(args.index, _embedder(args), threshold=args.threshold,
                                        index_type="FLAT" if args.factory == "Flat" else args.factory)
        if len(gallery) and not args.overwrite:
            raise SystemExit(f"{args.index} already holds {len(gallery)} images: use `add`")
        out = {"index": args.index, **gallery.add(_entries(args.images, args.root, args.catalogue), key_id="cli")}
        if args.val_images:
            out["threshold"] = gallery.calibrate(_entries(args.val_images, args.val_root, args.catalogue),
                                                 args.target_far).to_dict()
        _print({**out, "images": len(gallery), "products": len(gallery.products())})
        return
    index_dir = Path(args.index)
    if (index_dir / "CURRENT").exists() and not args.overwrite:
        raise SystemExit(f"{index_dir} already holds a gallery: use `add`, or `build --overwrite` for a new version")
    if index_dir.exists() and any(index_dir.iterdir()) and not (index_dir / "CURRENT").exists():
        raise SystemExit(f"{index_dir} is not empty and holds no gallery; choose an empty or new folder")
    emb = _embedder(args)
    gallery = Gallery.create(emb, None, factory=args.factory, threshold=args.threshold)
    report = gallery.add(_entries(args.images, args.root, args.catalogue))
    out = {"index": str(index_dir), "images": len(gallery), "products": len(gallery.products()), **report}
    if args.val_images:
        val = _entries(args.val_images, args.val_root, args.catalogue)
        out["threshold"] = gallery.calibrate(val, args.target_far, key_id="cli").to_dict()
        if args.target_wrong is not None:
            out["margin"] = gallery.calibrate_margin(val, args.target_wrong, key_id="cli").to_dict()
    gallery.directory = index_dir  # saved once, complete (a crash mid-build leaves no half gallery)
    gallery.save()
    _print(out)


def cmd_add(args) -> None:
    from src.recognition.gallery import ProductImage
    from src.recognition.milvus_gallery import open_gallery

    gallery = open_gallery(args.index, _embedder(args))
    if args.images:
        entries = _entries(args.images, args.root, args.catalogue)
    elif args.image and args.sku:
        entries = [ProductImage(args.sku, str(Path(p).resolve()), args.name, args.category, args.price)
                   for p in args.image]
    else:
        raise SystemExit("add needs --images LIST, or --image PATH [PATH ...] with --sku")
    _print(gallery.add(entries, key_id="cli"))


def cmd_remove(args) -> None:
    from src.recognition.gallery import removal_audit
    from src.recognition.milvus_gallery import is_milvus_location
    from src.retrieval.gallery_store import directory_lock
    from src.retrieval.index import GalleryIndex

    if is_milvus_location(args.index):
        from src.retrieval.milvus_audit import MilvusAuditLog
        from src.retrieval.milvus_index import MilvusGalleryIndex

        index, trail = MilvusGalleryIndex.open(args.index), MilvusAuditLog(args.index)
        rows = [r for r in (index.metadata(int(i)) for i in index.ids) if r["sku"] in set(args.sku)]
        n = index.remove(skus=args.sku)
        if n == 0:
            raise SystemExit(f"no image of sku {args.sku} in {args.index}")
        trail.append(removal_audit(rows, "cli"))
        _print({"removed": n, "count": len(index)})
        return
    with directory_lock(args.index):  # a running service (or another command) may be changing it too
        index = GalleryIndex.load(args.index)  # no embedder needed to remove
        rows = [index.metadata(int(i)) for i in index.ids]
        n = index.remove(skus=args.sku)
        if n == 0:
            raise SystemExit(f"no image of sku {args.sku} in {args.index}")
        index.save(args.index, audit=removal_audit([r for r in rows if r["sku"] in set(args.sku)], "cli"))
    _print({"removed": n, "count": len(index)})


def cmd_calibrate(args) -> None:
    from src.recognition.milvus_gallery import open_gallery

    gallery = open_gallery(args.index, _embedder(args))
    val = _entries(args.val_images, args.val_root, args.catalogue)
    out = gallery.calibrate(val, args.target_far, key_id="cli").to_dict()
    if args.target_wrong is not None:
        out["margin"] = gallery.calibrate_margin(val, args.target_wrong, key_id="cli").to_dict()
    _print(out)


def _pipeline(args):
    from src.inference.detector import load_detector
    from src.recognition.milvus_gallery import open_gallery
    from src.recognition.pipeline import RecognitionPipeline

    gallery = open_gallery(args.index, _embedder(args))
    det = load_detector(args.detector, score_threshold=args.det_threshold, device=args.device, threads=args.threads) \
        if args.detector else None
    return RecognitionPipeline(gallery.embedder, gallery.index, det, whole_image=args.whole_image, top_k=args.k)


def cmd_search(args) -> None:
    from src.data.images import read_rgb

    _print(_pipeline(args).recognize(read_rgb(args.image)).to_dict())


def cmd_checkout(args) -> None:
    from src.data.images import read_rgb
    from src.recognition.checkout import checkout

    _print(checkout(_pipeline(args), read_rgb(args.image)))


def parse_frames(text: str):
    """"auto", "start:stop:step" (Python range) or "a,b,c"."""
    if text == "auto":
        return "auto"
    try:
        if ":" in text:
            return list(range(*(int(p) for p in text.split(":"))))
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--frames must be 'auto', 'start:stop:step' or 'a,b,c', got {text!r}") from None


def live_config(args, recipe=None):
    """The LiveConfig of `match-live`'s arguments; thresholds left unset come from the detector checkpoint's
    ``inference.detection`` settings (as src.detect reads them), else from LiveConfig's defaults (0.9 / 0.95)."""
    from src.recognition.live import LiveConfig

    recipe = recipe or {}

    def pick(value, key, default):
        if value is not None:
            return value
        return recipe[key] if recipe.get(key) is not None else default

    return LiveConfig(frame_indices=args.frames, video_short_side=args.video_short_side or None,
                      image_short_side=args.image_short_side or None,
                      image_box_threshold=pick(args.image_threshold, "score_threshold_image",
                                               LiveConfig.image_box_threshold),
                      video_box_threshold=pick(args.video_threshold, "score_threshold_video",
                                               LiveConfig.video_box_threshold),
                      fallback=args.fallback, strategy=args.strategy, keep_ratio=args.keep_ratio,
                      top_fraction=args.top_fraction, max_distance=args.max_distance)


def cmd_match_live(args) -> None:
    from src.inference.detector import load_detector
    from src.recognition.live import ModelLiveDetector, OracleLiveDetector, match_live, score_live

    recipe = {}
    if args.oracle_boxes:
        detector = OracleLiveDetector(args.data)
    elif args.detector:
        # Score threshold ~0 here: the live image/video thresholds (and the fallback) apply later.
        det = load_detector(args.detector, score_threshold=0.01, device=args.device, threads=args.threads)
        recipe = det.detection
        detector = ModelLiveDetector(det)
    else:
        raise SystemExit("match-live needs --detector CKPT or --oracle-boxes (ground-truth boxes)")
    cfg = live_config(args, recipe)
    run = match_live(args.data, _embedder(args), detector, args.out, cfg)
    out = {"result": str(args.out), **run.counts,
           "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}}
    if (Path(args.data) / "ground_truth.json").exists():
        out["score"] = score_live(run.result, args.data)
    _print(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.recognize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, embedder=True, index=True):
        if index:
            sp.add_argument("--index", required=True,
                            help="gallery folder, or a Milvus collection (milvus://host:19530#name, gallery.db)")
        if embedder:
            sp.add_argument("--embedder", required=True,
                            help="embedder .ckpt (src.train) or .onnx (scripts/export_onnx.py)")
            sp.add_argument("--device", default="cpu")
            sp.add_argument("--batch-size", type=int, default=64)
            sp.add_argument("--threads", type=int, default=None,
                            help="threads for torch and ONNX Runtime (default: theirs)")

    def image_list(sp, required: bool):
        sp.add_argument("--images", required=required, help="image list: 'relative/path sku_id [uid]' per line")
        sp.add_argument("--root", help="folder the list's paths are relative to (default: the list's folder)")
        sp.add_argument("--catalogue", help="catalogue.json with name/category/price per sku_id")

    def recognition(sp):
        sp.add_argument("--image", required=True, help="RGB photo")
        sp.add_argument("--detector", help="detector .ckpt or .onnx (default: whole image only)")
        sp.add_argument("--det-threshold", type=float, default=0.5)
        sp.add_argument("--whole-image", default="always", choices=("always", "fallback", "never"))
        sp.add_argument("--k", type=int, default=5, help="neighbours per box")

    b = sub.add_parser("build", help="new gallery from an image list")
    common(b)
    image_list(b, True)
    b.add_argument("--factory", default="Flat", help="faiss index: Flat, HNSW32, IVF1024,PQ32 ...")
    b.add_argument("--threshold", type=float, help="fixed open-set threshold (else --val-images, else none)")
    b.add_argument("--val-images", help="validation image list to choose the threshold on")
    b.add_argument("--val-root")
    b.add_argument("--target-far", type=float, default=0.01, help="false-accept rate the threshold allows")
    b.add_argument("--target-wrong", type=float, default=None,
                   help="share of the validation's wrong matches above the threshold allowed to stay priced: "
                        "calibrates the look-alike margin (default: no margin)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing gallery (a new version)")
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("add", help="add product images")
    common(a)
    image_list(a, False)
    a.add_argument("--image", nargs="+", help="photos of one product (with --sku)")
    a.add_argument("--sku")
    a.add_argument("--name")
    a.add_argument("--category")
    a.add_argument("--price", type=float)
    a.set_defaults(func=cmd_add)

    r = sub.add_parser("remove", help="remove products by SKU")
    common(r, embedder=False)
    r.add_argument("--sku", required=True, nargs="+")
    r.set_defaults(func=cmd_remove)

    c = sub.add_parser("calibrate", help="choose the open-set threshold for a target false-accept rate")
    common(c)
    c.add_argument("--val-images", required=True)
    c.add_argument("--val-root")
    c.add_argument("--catalogue")
    c.add_argument("--target-far", type=float, default=0.01)
    c.add_argument("--target-wrong", type=float, default=None,
                   help="share of the validation's wrong matches above the threshold allowed to stay priced: "
                        "calibrates the look-alike margin (default: no margin)")
    c.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("search", help="recognise the products in a photo")
    common(s)
    recognition(s)
    s.set_defaults(func=cmd_search)

    k = sub.add_parser("checkout", help="price a counter photo")
    common(k)
    recognition(k)
    k.set_defaults(func=cmd_checkout)

    m = sub.add_parser("match-live", help="image<->video matching -> result.json")
    common(m, index=False)
    m.add_argument("--data", required=True, help="live-stream folder: image/, image_annotation/, video/, ...")
    m.add_argument("--out", required=True, help="result.json to write (atomically)")
    m.add_argument("--detector", help="detector .ckpt or .onnx")
    m.add_argument("--oracle-boxes", action="store_true", help="use the annotated boxes (matching upper bound)")
    # Defaults: the 7th-place recipe, equal to LiveConfig's (tests/recognition/test_recognize_cli.py checks).
    m.add_argument("--frames", type=parse_frames, default="80:381:20",
                   help="frame indices: 'start:stop:step' (default 80:381:20, i.e. 80, 100, ..., 380), '3,9,15', "
                        "or 'auto' (the recipe's positions scaled to each video's length)")
    m.add_argument("--video-short-side", type=int, default=608,
                   help="shrink frames to this shorter side before detection (default 608; 0: as they are)")
    m.add_argument("--image-short-side", type=int, default=0,
                   help="shrink shop images to this shorter side (default 0: as they are, as in the recipe)")
    m.add_argument("--image-threshold", type=float, default=None,
                   help="shop-image box score threshold (default: the detector checkpoint's "
                        "detect.score_threshold_image, else 0.9)")
    m.add_argument("--video-threshold", type=float, default=None,
                   help="frame box score threshold (default: the checkpoint's detect.score_threshold_video, else 0.95)")
    m.add_argument("--fallback", default="none", choices=("none", "top1"),
                   help="an image or frame with no box above the threshold: 'none' drops it (the recipe), "
                        "'top1' keeps its best box")
    m.add_argument("--strategy", default="per_folder", choices=("per_folder", "per_video"),
                   help="'per_folder': the recipe's rules; 'per_video': the transposed variant "
                        "(see src/retrieval/live_matching.py)")
    m.add_argument("--keep-ratio", type=float, default=0.28, help="share of a folder's nearest pairs kept (0.28)")
    m.add_argument("--top-fraction", type=float, default=0.5,
                   help="share of the voted videos kept by count (0.5)")
    m.add_argument("--max-distance", type=float, default=1.12,
                   help="matches farther than this (euclidean, unit embeddings) are dropped (1.12)")
    m.set_defaults(func=cmd_match_live)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
