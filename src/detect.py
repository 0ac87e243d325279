"""Run a trained detector: `python -m src.detect ckpt_path=<file|latest> input=<folder|video|coco.json> [output=...]`.

Writes, atomically, under `output` (default: the Hydra run dir):
  results.json  COCO results [{image_id, category_id, bbox xywh, score}] in original image pixels
  images.json   a COCO file (images + categories, no annotations) naming what each image_id is, so that
                `COCO("images.json").loadRes("results.json")` works for folders and videos too; for a COCO input,
                `COCO(input).loadRes("results.json")` works directly
  crops/        with save_crops=true: one JPEG per detection, and crops.json describing them

Settings left null in conf/detect.yaml come from the checkpoint's `inference.detection` settings (an
experiment's recipe, e.g. the live-stream thresholds), then from built-in defaults: score thresholds 0.9
(images) and 0.95 (video frames), shorter sides from the training data's eval_size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from src.data.detection import scale_boxes, to_coco_results, write_coco_results  # noqa: E402
from src.data.images import read_rgb, resize_shorter_side  # noqa: E402
from src.data.readers import IMAGE_EXTENSIONS, load_coco  # noqa: E402
from src.data.video import VIDEO_EXTENSIONS, read_video_frames, video_info  # noqa: E402
from src.inference.detector import Detector, load_detector  # noqa: E402
from src.utils import resolvers  # noqa: E402,F401
from src.utils.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from src.utils.run_dirs import latest_best_checkpoint  # noqa: E402

log = logging.getLogger(__name__)

DEFAULTS = {"score_threshold_image": 0.9, "score_threshold_video": 0.95}


def _setting(cfg: DictConfig, defaults: dict, key: str, fallback: Any) -> Any:
    """CLI/detect.yaml value, else the checkpoint's `inference.detection.<key>`, else the fallback."""
    if cfg.get(key) is not None:
        return cfg[key]
    return defaults.get(key) if defaults.get(key) is not None else fallback


def _resize(image: np.ndarray, short_side: int | None, max_size: int | None) -> np.ndarray:
    return resize_shorter_side(image, short_side, max_size)[0]


def _items(cfg: DictConfig, kind: str, src: Path, short_side: int | None, video_side: int | None,
           max_size: int | None) -> tuple[list[dict], Iterator[tuple[dict, np.ndarray, np.ndarray]]]:
    """(COCO image entries, iterator of (entry, original RGB, resized RGB)). Folder entries get their size
    when the image is read (one decode per image)."""
    if kind == "video":
        info = video_info(src)
        indices = list(cfg.video_frames) if cfg.get("video_frames") is not None else \
            list(range(0, max(info["frame_count"], 1), int(cfg.video_stride)))
        frames = read_video_frames(src, indices, video_side, max_size, keep_original=bool(cfg.save_crops))
        entries = [{"id": f.index + 1, "file_name": f"{src.name}#frame={f.index}", "frame_index": f.index,
                    "height": f.orig_size[0], "width": f.orig_size[1]} for f in frames]
        return entries, ((e, f.original, f.image) for e, f in zip(entries, frames))
    if kind == "coco":
        data = load_coco(src)
        root = Path(cfg.image_root) if cfg.get("image_root") else src.parent
        entries = [dict(im) for im in data["images"]]
        paths = [root / im["file_name"] for im in entries]
    else:
        paths = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"no images with extensions {IMAGE_EXTENSIONS} in {src}")
        entries = [{"id": i + 1, "file_name": p.name} for i, p in enumerate(paths)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        hint = " (set image_root=<folder the file_names are relative to>)" if kind == "coco" else ""
        raise FileNotFoundError(f"{src}: {len(missing)} image(s) not found, first {missing[0]}{hint}")

    def gen_images():
        for e, p in zip(entries, paths):
            img = read_rgb(str(p))
            if kind == "coco" and (e["height"], e["width"]) != img.shape[:2]:
                raise ValueError(f"{src}: image {e['id']} ({p}) is {img.shape[1]}x{img.shape[0]} on disk but "
                                 f"{e['width']}x{e['height']} in the file")
            e["height"], e["width"] = img.shape[:2]
            yield e, img, _resize(img, short_side, max_size)

    return entries, gen_images()


def _input_kind(src: Path) -> str:
    if src.is_dir():
        return "folder"
    if not src.is_file():
        raise FileNotFoundError(f"input not found: {src}")
    if src.suffix.lower() == ".json":
        return "coco"
    if src.suffix.lower() in VIDEO_EXTENSIONS:
        return "video"
    raise ValueError(f"input {src}: expected a folder of images, a video ({', '.join(VIDEO_EXTENSIONS)}) "
                     "or a COCO .json")


def _save_crops(out_dir: Path, entry: dict, image: np.ndarray, results: list[dict]) -> list[dict]:
    saved = []
    h, w = image.shape[:2]
    for k, r in enumerate(results):
        x, y, bw, bh = r["bbox"]
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(w, int(np.ceil(x + bw))), min(h, int(np.ceil(y + bh)))
        if x1 <= x0 or y1 <= y0:
            continue
        rel = f"crops/{entry['id']:06d}_{k:03d}.jpg"
        crop = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if ok:
            atomic_write_bytes(out_dir / rel, buf.tobytes())
            saved.append({"file_name": rel, **r})
    return saved


def detect(cfg: DictConfig) -> dict:
    ckpt = Path(cfg.ckpt_path) if cfg.ckpt_path != "latest" else latest_best_checkpoint(cfg.paths.outputs_dir)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    loaded = load_detector(ckpt, device=device)  # e.g. ckpt_path=latest found a classifier run: one clear error
    categories = loaded.categories
    if categories is None:
        log.warning("%s has no detection categories: writing labels as category ids", ckpt)
        label_to_cat = None
        categories = []
    else:
        label_to_cat = {i + 1: c["id"] for i, c in enumerate(categories)}

    defaults = loaded.detection
    max_size = cfg.max_size if cfg.get("max_size") is not None else loaded.max_size
    short_side = _setting(cfg, defaults, "image_short_side", loaded.eval_size)
    video_side = _setting(cfg, defaults, "video_short_side", loaded.eval_size)
    src = Path(cfg.input)
    kind = _input_kind(src)
    threshold = float(_setting(cfg, defaults, "score_threshold_video" if kind == "video" else "score_threshold_image",
                               DEFAULTS["score_threshold_video" if kind == "video" else "score_threshold_image"]))
    out_dir = Path(cfg.output or cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("Detecting on %s (%s) with %s, score >= %.3f", src, kind, ckpt, threshold)

    entries, items = _items(cfg, kind, src, short_side, video_side, max_size)
    results, crops = [], []
    batch: list[tuple[dict, np.ndarray, np.ndarray]] = []

    # Images arrive resized (above): the detector runs them as they are, every box kept for the threshold below.
    detector = Detector(loaded.model, score_threshold=0.0, max_detections=1 << 30, device=device,
                        batch_size=int(cfg.batch_size))

    def flush():
        for (entry, orig, resized), d in zip(batch, detector.detect_batch([r for _, _, r in batch])):
            # Back to the pixels of the image on disk (or the decoded frame).
            p = {"boxes": scale_boxes(torch.from_numpy(d.boxes), resized.shape[:2], (entry["height"], entry["width"])),
                 "scores": torch.from_numpy(d.scores), "labels": torch.from_numpy(d.labels)}
            res = to_coco_results([p], [entry["id"]], label_to_cat, threshold)
            results.extend(res)
            if cfg.save_crops and orig is not None:
                crops.extend(_save_crops(out_dir, entry, orig, res))
        batch.clear()

    for item in items:
        batch.append(item)
        if len(batch) >= int(cfg.batch_size):
            flush()
    if batch:
        flush()

    results_path = write_coco_results(out_dir / "results.json", results)
    images_path = out_dir / "images.json"
    atomic_write_json(images_path, {"images": entries, "annotations": [],
                                    "categories": [dict(c) for c in categories]})
    out = {"results": str(results_path), "images": str(images_path), "num_images": len(entries),
           "num_detections": len(results), "checkpoint": str(ckpt), "score_threshold": threshold}
    if cfg.save_crops:
        atomic_write_json(out_dir / "crops.json", crops)
        out["crops"] = str(out_dir / "crops.json")
    log.info("Wrote %d detections on %d images to %s", len(results), len(entries), results_path)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="detect")
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.output_dir  # resolve ${hydra:...} while Hydra is alive
    out = detect(cfg)
    print(OmegaConf.to_yaml(OmegaConf.create(out)))


if __name__ == "__main__":
    main()
