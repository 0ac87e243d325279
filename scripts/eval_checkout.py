"""Basket metrics of the checkout pipeline on the retail world's generated counter scenes.

    python scripts/eval_checkout.py --embedder CKPT [--detector CKPT] [--target-far 0.01]

Gallery: one catalogue (studio) image per SKU, all SKUs. Threshold: chosen for ``--target-far`` on the
ground-truth crops of the *train* scenes (genuine = best score to the crop's own SKU, impostor = best score
to any other SKU); scored on the *val* scenes. Rows: ground-truth boxes (recognition alone) and, with
--detector, the detector's boxes; each with the calibrated threshold and with none (closed set).
Writes experiments/checkout/README.md (and metrics.json) atomically.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.utils import instantiate  # noqa: E402

from src.recognition.checkout import basket_metrics, checkout  # noqa: E402
from src.inference.detector import load_detector  # noqa: E402
from src.inference.embedder import load_embedder  # noqa: E402
from src.recognition.gallery import (  # noqa: E402
    Gallery,
    embed_entries,
    entries_from_image_list,
    read_catalogue,
)
from src.recognition.calibration import choose_threshold  # noqa: E402
from src.recognition.pipeline import RecognitionPipeline  # noqa: E402
from src.recognition.world import catalogue_entries, counter_scenes, scene_crop_entries  # noqa: E402
from src.utils.checkpoint import config_from_checkpoint  # noqa: E402
from src.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

# Counter crops of never-seen SKUs (the validation half): genuine and impostor scores as the open set meets them.
CALIBRATION_LIST = "lists/counter_query_val.txt"


def world_root(embedder_ckpt: str, override: str | None) -> Path:
    """The retail world the embedder was trained on (its checkpoint config names it), or --world."""
    if override:
        return Path(override)
    source = instantiate(config_from_checkpoint(embedder_ckpt).data.source)
    source.prepare()
    return Path(source.root)


def evaluate(pipeline, scenes, prices, use_boxes: bool) -> dict:
    receipts, ms = [], []
    for scene in scenes:
        r = checkout(pipeline, scene.image(), boxes=scene.boxes if use_boxes else None)
        receipts.append(r)
        ms.append(r["timings"]["total_ms"])
    metrics = basket_metrics(receipts, [s.skus for s in scenes], prices)
    return {**metrics, "mean_ms_per_photo": sum(ms) / len(ms)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder", required=True)
    p.add_argument("--detector")
    p.add_argument("--det-threshold", type=float, default=0.5)
    p.add_argument("--world", help="retail world folder (default: the embedder's training world)")
    p.add_argument("--target-far", type=float, nargs="+", default=[0.01, 0.1, 0.3],
                   help="false-accept rates to calibrate a threshold for (one row each)")
    p.add_argument("--calibration", default=CALIBRATION_LIST,
                   help="image list (relative to the world) of the crops the thresholds are chosen on, or "
                        "'train-scenes' for the ground-truth crops of the train counter photos (which hold "
                        "training SKUs: optimistic for an embedder trained on their counter crops)")
    p.add_argument("--gallery-views", nargs="*", default=None,
                   help="views to enrol catalogue images with (none given: no views; default: the checkpoint's "
                        "inference.gallery_views)")
    p.add_argument("--out", default="experiments/checkout")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: OpenMP threads spin against other jobs on a shared 2-core machine)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()

    root = world_root(args.embedder, args.world)
    embedder = load_embedder(args.embedder, gallery_views=args.gallery_views)
    prices = {sku: meta["price"] for sku, meta in read_catalogue(root / "catalogue.json").items()}
    gallery = Gallery.create(embedder)
    gallery.add(catalogue_entries(root))
    if args.calibration == "train-scenes":
        calib = scene_crop_entries(counter_scenes(root, "train"))
    else:
        calib = entries_from_image_list(root / args.calibration, root=root)
    calib_vectors = embed_entries(embedder, calib)
    reports = [choose_threshold(gallery.index, calib_vectors, [e.sku for e in calib], far) for far in args.target_far]
    scenes = counter_scenes(root, "val")

    detector = load_detector(args.detector, score_threshold=args.det_threshold) if args.detector else None
    rows = []
    for boxes_name, det in [("ground-truth boxes", None)] + ([("detector", detector)] if detector else []):
        for thr_name, thr in [(f"FAR {r.target_far:g} ({r.threshold:.3f})", r.threshold) for r in reports] + [
                ("none (closed set)", None)]:
            gallery.index.set_threshold(thr)
            pipe = RecognitionPipeline(embedder, gallery.index, det, whole_image="always" if det else "never")
            rows.append({"boxes": boxes_name, "threshold": thr_name,
                         **evaluate(pipe, scenes, prices, use_boxes=det is None)})

    out = Path(args.out)
    cmd = "python scripts/eval_checkout.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    metrics = {"command": cmd, "world": str(root), "embedder": args.embedder, "detector": args.detector,
               "embedder_fingerprint": embedder.fingerprint, "gallery_views": list(embedder.gallery_views),
               "gallery_images": len(gallery), "calibration_crops": args.calibration, "torch_threads": args.threads,
               "val_scenes": len(scenes), "val_products": sum(len(s.skus) for s in scenes),
               "calibration": [r.to_dict() for r in reports], "rows": rows, "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "README.md", render(metrics))
    print(render(metrics))


def render(m: dict) -> str:
    lines = [
        "# Checkout on generated counter scenes",
        "",
        "Basket metrics of `src.recognition` (detector -> crops -> embedder -> gallery -> threshold -> NMS ->",
        "receipt) on the retail world's validation counter scenes. Written by `scripts/eval_checkout.py`.",
        "",
        "```",
        m["command"],
        "```",
        "",
        f"- world: `{m['world']}`; {m['val_scenes']} val scenes, {m['val_products']} products on the counters",
        f"- embedder: `{m['embedder']}` (fingerprint `{m['embedder_fingerprint'][:16]}`)",
        f"- detector: `{m['detector']}`" if m["detector"] else "- detector: none (ground-truth boxes only)",
        f"- gallery: {m['gallery_images']} catalogue images, one per SKU (training and never-seen SKUs), enrolled "
        + (f"with views {m['gallery_views']}" if m["gallery_views"] else "as they are (no gallery views)"),
        f"- thresholds chosen on the crops of `{m['calibration_crops']}` (genuine: best score "
        "to the crop's own SKU; impostor: best score to any other SKU, i.e. the SKU held out of the gallery): "
        + "; ".join(f"FAR {c['target_far']:g} -> {c['threshold']:.4f} (measured FAR {c['far']:.3f}, FRR "
                    f"{c['frr']:.3f})" for c in m["calibration"])
        + f" on {m['calibration'][0]['n_genuine']} genuine / {m['calibration'][0]['n_impostor']} impostor scores",
        f"- run time {m['seconds']} s on this machine (ms / photo: shared 2-core CPU, "
        f"{m['torch_threads']} torch thread(s))",
        "",
        "| boxes | threshold (target FAR) | exact basket | mean abs price error | max abs error | item precision | "
        "item recall | unknown / scene | ms / photo |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in m["rows"]:
        lines.append(f"| {r['boxes']} | {r['threshold']} | {r['exact_basket_accuracy']:.3f} | "
                     f"{r['mean_abs_price_error']:.2f} | {r['max_abs_price_error']:.2f} | {r['item_precision']:.3f} | "
                     f"{r['item_recall']:.3f} | {r['unknown_per_scene']:.2f} | {r['mean_ms_per_photo']:.0f} |")
    lines += [
        "",
        "Definitions (src/recognition/checkout.py `basket_metrics`):",
        "",
        "- *exact basket*: the receipt's SKU counts equal the counter's and no box is left unknown (nothing for a",
        "  cashier to do);",
        "- *price error*: |receipt total - true total|; unknown boxes are not priced, so they count as missing;",
        "- *item precision / recall*: over product counts (multiset intersection of receipt and counter);",
        "- *unknown / scene*: boxes below the threshold, listed on the receipt for the cashier.",
        "",
        "The closed-set rows (no threshold) price every box with its nearest product: they show what the",
        "embedder alone gets right; the threshold rows show the open-set trade-off (fewer wrong prices, more",
        "unknowns). Ground-truth-box rows isolate recognition from detection.",
        "",
        "Runs with other checkpoints (`--out experiments/checkout/<name>`) have their own README in a subfolder.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
