"""The recognition demo: gallery from the demo's trained models, a checkout receipt against the truth, and a
new product added to the gallery and recognised without retraining.

    python scripts/recognition_demo.py [--embedder CKPT|RUN_DIR] [--detector CKPT|RUN_DIR]

A run directory stands for its best checkpoint; without arguments it takes the newest finished runs under
outputs/ (any EmbeddingSystem and DetectionSystem). `make recognition-demo` trains experiment=
recognition_embedder, fcos_lite0_mainbody (checkout) and recognition_detector (live stream) first. Work files
go to --workdir. Commands and measured quality: experiments/recognition_demo/README.md.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from src.recognition.checkout import basket_metrics, checkout, make_receipt  # noqa: E402
from src.inference.detector import load_detector  # noqa: E402
from src.inference.embedder import load_embedder  # noqa: E402
from src.recognition.gallery import Gallery, entries_from_image_list  # noqa: E402
from src.recognition.pipeline import RecognitionPipeline  # noqa: E402
from src.recognition.world import catalogue_entries, counter_scenes  # noqa: E402
from src.utils.run_dirs import SUMMARY  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from eval_checkout import CALIBRATION_LIST, world_root  # noqa: E402


def newest_run(outputs: Path, target: str) -> Path | None:
    """Best (else last) checkpoint of the newest finished run whose model is `target`."""
    for summary in sorted(outputs.rglob(SUMMARY), key=lambda p: p.stat().st_mtime, reverse=True):
        cfg_file = summary.parent / "config_resolved.yaml"
        if not cfg_file.is_file() or OmegaConf.load(cfg_file).model.get("_target_") != target:
            continue
        data = OmegaConf.to_container(OmegaConf.load(summary))
        for key in ("best_ckpt_path", "last_ckpt_path"):
            if data.get(key):
                # As recorded, else by name in the run's own checkpoints/ (a run directory moved since).
                for path in (Path(data[key]), summary.parent / "checkpoints" / Path(data[key]).name):
                    if path.is_file():
                        return path
    return None


def checkpoint(given: str | None, outputs: Path, target: str) -> Path | None:
    """A checkpoint file as given, the best checkpoint of a run directory, or the newest run's."""
    if given and Path(given).is_file():
        return Path(given)
    found = newest_run(Path(given) if given else outputs, target)
    if given and found is None:
        raise SystemExit(f"{given}: not a checkpoint nor a finished run of {target.rsplit('.', 1)[-1]}")
    return found


def show_receipt(title: str, receipt: dict, truth: tuple[str, ...], names: dict[str, str]) -> None:
    print(f"\n--- {title}")
    true = Counter(truth)
    for line in receipt["items"]:
        mark = "ok " if true.get(line["sku"], 0) == line["count"] else "XX "
        print(f"  {mark}{line['count']} x {line['name']:<24} sku {line['sku']:>3}  {line['unit_price']:6.2f}"
              f"  {line['line_total']:7.2f}")
    for u in receipt.get("uncertain", []):
        cands = " or ".join(f"{c['name']} (sku {c['sku']}, {c['score']:.3f})" for c in u["candidates"])
        print(f"  ?? uncertain box {[round(v) for v in u['box']]}: {cands}, margin {u['margin']:.3f} "
              "< the gallery's: not priced")
    for u in receipt["unknown"]:
        g = u["best_guess"]
        guess = f"best guess {g['name']} (sku {g['sku']}, score {g['score']:.2f})" if g else "no guess"
        print(f"  ?? unknown box {[round(v) for v in u['box']]}: {guess}")
    print(f"  total {receipt['total']:.2f}   complete={receipt['complete']}")
    print("  truth: " + ", ".join(f"{c} x {names[s]} (sku {s})" for s, c in sorted(true.items())))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder")
    p.add_argument("--detector")
    p.add_argument("--live-detector", help="detector for the live-stream step (default: --detector). The checkout's "
                   "FCOS main-body model finds no live box at IoU 0.5 (experiments/detection_one_stage): make "
                   "recognition-demo gives this step the Faster R-CNN of experiment=recognition_detector")
    p.add_argument("--outputs", default=str(ROOT / "outputs"))
    p.add_argument("--workdir", default=str(ROOT / "outputs" / "recognition_demo" / "work"))
    p.add_argument("--target-far", type=float, default=0.1,
                   help="open-set operating point (experiments/recognition_demo/README.md has 0.01, 0.1, 0.3)")
    p.add_argument("--det-threshold", type=float, default=0.5)
    p.add_argument("--target-wrong", type=float, default=0.1,
                   help="look-alike margin: share of the calibration's wrong matches above the threshold allowed to "
                        "stay priced (Gallery.calibrate_margin); closer matches are listed as uncertain")
    p.add_argument("--no-live", action="store_true", help="skip step 4 (live-stream matching)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # shared 2-core machine: OpenMP threads would spin against other jobs

    emb_ckpt = checkpoint(args.embedder, Path(args.outputs), "src.models.embedding.EmbeddingSystem")
    det_ckpt = checkpoint(args.detector, Path(args.outputs), "src.models.detection.DetectionSystem")
    if emb_ckpt is None:
        raise SystemExit("no embedder: run `python -m src.train experiment=recognition_embedder` "
                         "(see experiments/recognition_demo/README.md) or pass --embedder")
    print(f"embedder: {emb_ckpt}\ndetector: {det_ckpt or 'none (ground-truth boxes used instead)'}")
    root = world_root(str(emb_ckpt), None)
    embedder = load_embedder(emb_ckpt)
    detector = load_detector(det_ckpt, score_threshold=args.det_threshold) if det_ckpt else None

    # The "new product": a never-trained-on SKU that appears in a val scene, kept out of the first gallery.
    spec = OmegaConf.load(root / "spec.json")
    scenes = counter_scenes(root, "val")
    new_sku, scene = next((s, sc) for sc in scenes for s in sc.skus if int(s) >= spec.num_train_skus)
    entries = catalogue_entries(root)
    names = {e.sku: e.name for e in entries}
    work = Path(args.workdir)
    gallery_dir = work / "gallery"
    if gallery_dir.exists():
        import shutil

        shutil.rmtree(gallery_dir)
    print(f"\n1) gallery: {len(entries) - 1} catalogue images (all SKUs but the new product {names[new_sku]}, "
          f"sku {new_sku})")
    gallery = Gallery.create(embedder, gallery_dir)
    gallery.add([e for e in entries if e.sku != new_sku])
    # Open-set threshold on counter crops of never-seen SKUs (not on the val photos it is then judged on).
    calibration = entries_from_image_list(root / CALIBRATION_LIST, root=root)
    report = gallery.calibrate(calibration, args.target_far)
    print(f"   threshold {report.threshold:.3f} for FAR {args.target_far:g} on {CALIBRATION_LIST} "
          f"(FAR {report.far:.3f}, FRR {report.frr:.3f}) -> saved in {gallery_dir}")
    # Look-alike margin on the same crops (their SKUs in the gallery): a match closer than it to another SKU is
    # listed as uncertain, not priced (a silent wrong line is most often a look-alike won by a hair).
    margin = gallery.calibrate_margin(calibration, args.target_wrong)
    print(f"   margin {margin.margin:.4f} for {args.target_wrong:g} of the wrong matches above the threshold left "
          f"priced ({margin.n_wrong} wrong, {margin.n_right} right on {CALIBRATION_LIST}: "
          f"{margin.wrong_priced:.2f} of the wrong stay priced, {margin.right_uncertain:.2f} of the right become "
          "uncertain)")

    pipe = RecognitionPipeline(embedder, gallery.index, detector)
    boxes = None if detector else scene.boxes
    image = scene.image()
    x0, y0, x1, y1 = (round(v) for v in scene.boxes[scene.skus.index(new_sku)])
    new_crop = embedder.embed([image[y0:y1, x0:x1]])

    def top5(when: str) -> None:
        res = gallery.index.search(new_crop, 5, fingerprint=embedder.fingerprint)
        ranked = ", ".join(f"{m['sku']}{'*' if m['sku'] == new_sku else ''} {s:.2f}"
                           for m, s in zip(res.metadata[0], res.scores[0]))
        print(f"   top-5 for the new product's true box {when}: {ranked}  (* = sku {new_sku}; threshold "
              f"{gallery.index.threshold:.2f})")

    print(f"\n2) checkout of {scene.image_path}")
    show_receipt("receipt before adding the new product", checkout(pipe, image, boxes=boxes), scene.skus, names)
    top5("before adding it")

    print(f"\n3) add the new product from its catalogue image (no retraining): {names[new_sku]}, sku {new_sku}")
    print("   " + str(gallery.add([e for e in entries if e.sku == new_sku])))
    show_receipt("receipt after adding it", checkout(pipe, image, boxes=boxes), scene.skus, names)
    top5("after adding it")
    with_gt = checkout(pipe, image, boxes=scene.boxes)
    found = [line for line in with_gt["items"] if line["sku"] == new_sku]
    print(f"\n   with ground-truth boxes the new product is "
          f"{'recognised' if found else 'not recognised'} ({with_gt['total']:.2f} total)")

    # Every validation photo with the full gallery: how often is the receipt exactly right and complete, and how
    # many priced lines are wrong (silent: nothing tells the cashier), without and with the look-alike margin?
    prices = {e.sku: e.price for e in entries}
    calibrated = gallery.index.margin
    # One recognition per photo with the margin in force; "without" puts its uncertain boxes back among the
    # items, which is what the pipeline does with no margin (the margin only splits the boxes it keeps).
    recs = [pipe.recognize(sc.image(), boxes=None if detector else sc.boxes) for sc in scenes]
    for label, with_margin in (("without a margin", False), (f"margin {calibrated:.4f}", True)):
        receipts = [make_receipt(r if with_margin else replace(r, items=r.items + r.uncertain, uncertain=[]))
                    for r in recs]
        m = basket_metrics(receipts, [sc.skus for sc in scenes], prices)
        right = [Path(sc.image_path).name for sc, r in zip(scenes, receipts)
                 if basket_metrics([r], [sc.skus], prices)["exact_basket_accuracy"] == 1.0]
        priced = sum(line["count"] for r in receipts for line in r["items"])
        print(f"\n   all {len(scenes)} val photos, {label}: {len(right)} receipts exactly right and complete "
              f"(item recall {m['item_recall']:.2f}, precision {m['item_precision']:.2f}, "
              f"{m['unknown_per_scene']:.2f} unknown and {m['uncertain_per_scene']:.2f} uncertain boxes a photo, "
              f"mean price error {m['mean_abs_price_error']:.2f})")
        print(f"   silent wrong lines: {m['silent_wrong_lines']} of {priced} priced products "
              f"({m['silent_wrong_rate']:.3f})")
        print(f"   right: {', '.join(right) or 'none'}")
        if with_margin:
            truth = [Counter(sc.skus) for sc in scenes]
            held = [(u["sku"], u["runner_up"]["sku"] if u["runner_up"] else None, t)
                    for r, t in zip(recs, truth) for u in r.uncertain]
            print(f"   uncertain boxes: {len(held)}; the top-1 was right in "
                  f"{sum(bool(t.get(s)) for s, _, t in held)}, the runner-up in "
                  f"{sum(bool(t.get(o)) for _, o, t in held if o)}")
    if args.no_live:
        return

    # Live stream: a generated Taobao-layout set, the recipe's frame positions scaled to 48-frame videos.
    from src.data.retail_world.live import LiveSpec, ensure_live
    from src.recognition.live import LiveConfig, ModelLiveDetector, OracleLiveDetector, match_live, score_live

    live_root = ensure_live(ROOT / "data" / "retail_live", LiveSpec())
    # Box thresholds: the detector's own (`inference.detection`; FCOS scores run lower than Faster R-CNN's), else
    # the recipe's 0.9/0.95. A detector may miss boxes at them: top-1 keeps every photo voting (not "none").
    live_ckpt = checkpoint(args.live_detector, Path(args.outputs), "src.models.detection.DetectionSystem") \
        if args.live_detector else det_ckpt
    live_model = load_detector(live_ckpt, score_threshold=0.01) if live_ckpt else None
    own = live_model.detection if live_model is not None else {}
    thresholds = {"image_box_threshold": float(own.get("score_threshold_image", 0.9)),
                  "video_box_threshold": float(own.get("score_threshold_video", 0.95))}
    cfg = LiveConfig(frame_indices="auto", video_short_side=None, fallback="top1", **thresholds)
    print(f"\n4) live-stream matching on {live_root} (frames 'auto' = 80..380 step 20 scaled to 48 frames)")
    detectors = [("annotated boxes (upper bound)", OracleLiveDetector(live_root))]
    if live_model is not None:
        detectors.append((f"detector, thresholds {cfg.image_box_threshold:g}/{cfg.video_box_threshold:g} + top-1 "
                          "fallback", ModelLiveDetector(live_model)))
    for name, live_det in detectors:
        run = match_live(live_root, embedder, live_det, work / "result.json", cfg)
        s = score_live(work / "result.json", live_root)
        print(f"   {name}: {run.counts}; match P/R/F1 {s['match_precision']:.2f}/{s['match_recall']:.2f}/"
              f"{s['match_f1']:.2f}, box accuracy {s['box_accuracy']:.2f}, full F1 {s['full_f1']:.2f}")
    print(f"   result.json: {work / 'result.json'}")


if __name__ == "__main__":
    main()
