"""Image <-> video product matching on the Taobao live-stream layout (see src/data/retail_world/live.py):
detect products in every shop image and in sampled video frames, embed every box, match with
src.retrieval.live_matching.match_videos and write result.json atomically.

`LiveConfig`'s defaults are the recipe of a 7th-place solution: frames 80, 100, ..., 380 of each video, the
video's shorter side scaled to 608 before detection, boxes kept at scores >= 0.9 (shop images) / 0.95
(frames), then the per-folder matching rules (keep 0.28, top 0.5 by count, max distance 1.12).
``frame_indices="auto"`` scales those indices to each video's length (the short synthetic videos). Frames are
only ever shrunk: upsampling adds no detail, and the detector resizes to its own eval size anyway. Where no
box passes the threshold, ``fallback`` decides: "none" (the recipe) drops the image or frame, "top1" keeps its
best box so that every photo still votes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from src.data.images import crop_box, read_rgb, resize_shorter_side
from src.data.video import read_video_frames, video_info
from src.inference.detector import Detections, DetectorLike
from src.inference.embedder import Embedder
from src.retrieval.live_matching import STRATEGIES, FrameBox, ImageBox, match_videos
from src.retrieval.live_scoring import score_live_matching, write_result_json
from src.utils.boxes import box_iou

log = logging.getLogger(__name__)

__all__ = ["FALLBACKS", "LiveBoxes", "LiveConfig", "ModelLiveDetector", "OracleLiveDetector", "RECIPE_FRAME_INDICES",
           "collect_live_boxes", "match_live", "match_live_boxes", "scaled_frame_indices", "score_live"]

RECIPE_FRAME_INDICES = tuple(range(80, 381, 20))
RECIPE_VIDEO_LENGTH = 400  # frames in the competition's videos, the length the recipe indices refer to


def scaled_frame_indices(num_frames: int, indices: Sequence[int] = RECIPE_FRAME_INDICES,
                         reference_length: int = RECIPE_VIDEO_LENGTH) -> list[int]:
    """The recipe's frame positions at the same fractions of a ``num_frames``-long video.

    >>> scaled_frame_indices(48)[:4], scaled_frame_indices(48)[-1]
    ([10, 12, 14, 17], 46)
    """
    scale = num_frames / reference_length
    return sorted({min(num_frames - 1, int(round(i * scale))) for i in indices})


FALLBACKS = ("none", "top1")


@dataclass
class LiveConfig:
    """Every number of the live recipe; the defaults are the recipe (the CLI's defaults are tested equal)."""

    frame_indices: Sequence[int] | str = RECIPE_FRAME_INDICES  # or "auto"
    video_short_side: int | None = 608  # frames shrunk to this shorter side before detection (None: as is)
    image_short_side: int | None = None  # shop images: as they are (the recipe resizes the videos only)
    image_box_threshold: float = 0.9
    video_box_threshold: float = 0.95
    fallback: str = "none"
    strategy: str = "per_folder"
    keep_ratio: float = 0.28
    top_fraction: float = 0.5
    max_distance: float = 1.12

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if isinstance(self.frame_indices, str) and self.frame_indices != "auto":
            raise ValueError(f"frame_indices must be a list of ints or 'auto', got {self.frame_indices!r}")
        for name in ("image_box_threshold", "video_box_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("video_short_side", "image_short_side"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number of pixels or None, got {getattr(self, name)}")


class LiveDetector(Protocol):
    """Boxes in the pixels of the (possibly resized) image it is given; ``scale`` = resized / original."""

    def image(self, item_id: str, img_name: str, image: np.ndarray, scale: float) -> Detections: ...

    def frame(self, video_id: str, frame_index: int, image: np.ndarray, scale: float) -> Detections: ...


class ModelLiveDetector:
    """A trained detector (score threshold 0: the live thresholds are applied by match_live)."""

    def __init__(self, detector: DetectorLike) -> None:
        self.detector = detector

    def image(self, item_id, img_name, image, scale):
        return self.detector.detect(image)

    def frame(self, video_id, frame_index, image, scale):
        return self.detector.detect(image)


class OracleLiveDetector:
    """Ground-truth boxes from the annotation files (the matching upper bound with perfect boxes; tests).

    Scores: the matching rules pick the highest-scoring box of a frame/image as its answer box, and a real
    detector is most confident on large unoccluded objects, so a box scores ``0.95 + 0.05 * area / largest
    area`` in its image: every box passes the 0.9/0.95 thresholds and the largest ranks first. The oracle
    knows where products are, not which one is the item."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._images: dict[tuple[str, str], list] = {}
        self._frames: dict[tuple[str, int], list] = {}
        for p in sorted((self.root / "image_annotation").glob("*.json")):
            data = json.loads(p.read_text())
            for im in data["imgs"]:
                self._images[(str(data["item_id"]), im["img_name"])] = [a["box"] for a in im["annotations"]]
        for p in sorted((self.root / "video_annotation").glob("*.json")):
            data = json.loads(p.read_text())
            for f in data["frames"]:
                self._frames[(str(data["video_id"]), int(f["frame_index"]))] = [a["box"] for a in f["annotations"]]

    @staticmethod
    def _dets(boxes: list, scale: float) -> Detections:
        b = np.asarray(boxes, np.float32).reshape(-1, 4) * scale
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        scores = 0.95 + 0.05 * area / area.max() if len(b) else np.zeros(0, np.float32)
        order = np.argsort(-scores, kind="stable")
        return Detections(b[order], scores[order].astype(np.float32), np.ones(len(b), np.int64))

    def image(self, item_id, img_name, image, scale):
        return self._dets(self._images.get((item_id, img_name), []), scale)

    def frame(self, video_id, frame_index, image, scale):
        return self._dets(self._frames.get((video_id, frame_index), []), scale)


def _keep(dets: Detections, threshold: float, fallback: str) -> Detections:
    ok = dets.scores >= threshold
    if not ok.any() and fallback == "top1" and len(dets):
        ok = dets.scores == dets.scores.max()
        ok &= np.cumsum(ok) == 1  # one box, the first best
    return Detections(dets.boxes[ok], dets.scores[ok], dets.labels[ok])


def _resize(image: np.ndarray, short_side: int | None) -> tuple[np.ndarray, float]:
    out, _ = resize_shorter_side(image, short_side, shrink_only=True)  # upsampling adds no detail
    return out, (1.0 if out is image else short_side / min(image.shape[:2]))


@dataclass
class _Pending:
    meta: dict[str, Any]
    box_original: tuple[float, ...]
    det_score: float
    crop: np.ndarray


@dataclass
class LiveRun:
    result: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)


def _list_items(root: Path) -> list[tuple[str, list[Path]]]:
    folder = root / "image"
    if not folder.is_dir():
        raise FileNotFoundError(f"{root}: no image/ folder (expected image/<item_id>/<n>.jpg)")
    items = [(p.name, sorted(q for q in p.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png")))
             for p in sorted(folder.iterdir()) if p.is_dir()]
    if not items:
        raise FileNotFoundError(f"{folder}: no item folders")
    return items


def _list_videos(root: Path) -> list[tuple[str, Path]]:
    folder = root / "video"
    if not folder.is_dir():
        raise FileNotFoundError(f"{root}: no video/ folder (expected video/<video_id>.mp4)")
    videos = [(p.stem, p) for p in sorted(folder.iterdir()) if p.suffix.lower() in (".mp4", ".avi", ".mov", ".mkv")]
    if not videos:
        raise FileNotFoundError(f"{folder}: no videos")
    return videos


@dataclass
class LiveBoxes:
    """The embedded boxes of a live-stream folder: what the matching rules take (see `collect_live_boxes`)."""

    images: dict[str, list[ImageBox]]
    frames: list[FrameBox]
    counts: dict[str, int]


def collect_live_boxes(root: str | os.PathLike, embedder: Embedder, detector: LiveDetector,
                       config: LiveConfig | None = None) -> LiveBoxes:
    """Detect (with ``config``'s frames, sizes, thresholds and fallback) and embed every box under ``root``."""
    cfg = config or LiveConfig()
    root = Path(root)
    pending: list[_Pending] = []
    for item_id, paths in _list_items(root):
        for path in paths:
            image, s = _resize(read_rgb(str(path)), cfg.image_short_side)
            dets = _keep(detector.image(item_id, path.name, image, s), cfg.image_box_threshold, cfg.fallback)
            for box, score in zip(dets.boxes, dets.scores):
                pending.append(_Pending({"kind": "image", "item_id": item_id, "img_name": path.name},
                                        tuple(float(v) / s for v in box), float(score), crop_box(image, box)))
    n_image_boxes = len(pending)
    n_frames = 0
    for video_id, path in _list_videos(root):
        info = video_info(path)
        if cfg.frame_indices == "auto":
            indices = scaled_frame_indices(max(1, info["frame_count"]))
        else:
            indices = list(cfg.frame_indices)
        side = cfg.video_short_side
        shrink = side and min(info["height"], info["width"]) > side  # never upscale
        for frame in read_video_frames(path, indices, side if shrink else None):
            n_frames += 1
            s = frame.image.shape[0] / frame.orig_size[0]
            dets = _keep(detector.frame(video_id, frame.index, frame.image, s), cfg.video_box_threshold, cfg.fallback)
            for box, score in zip(dets.boxes, dets.scores):
                pending.append(_Pending({"kind": "frame", "video_id": video_id, "frame_index": frame.index},
                                        tuple(float(v) / s for v in box), float(score), crop_box(frame.image, box)))
    emb = embedder.embed([p.crop for p in pending])
    images: dict[str, list[ImageBox]] = {}
    frames: list[FrameBox] = []
    for p, e in zip(pending, emb):
        box = tuple(round(v, 1) for v in p.box_original)
        if p.meta["kind"] == "image":
            images.setdefault(p.meta["item_id"], []).append(ImageBox(p.meta["img_name"], box, p.det_score, e))
        else:
            frames.append(FrameBox(p.meta["video_id"], p.meta["frame_index"], box, p.det_score, e))
    if not images:
        raise ValueError(f"{root}: no box in any shop image (lower image_box_threshold or use fallback='top1')")
    return LiveBoxes(images, frames, {"image_boxes": n_image_boxes, "frames": n_frames, "frame_boxes": len(frames)})


def match_live_boxes(boxes: LiveBoxes, config: LiveConfig | None = None) -> dict[str, Any]:
    """The matching rules of ``config`` (strategy and numbers) over collected boxes -> result.json dict."""
    cfg = config or LiveConfig()
    return match_videos(boxes.images, boxes.frames, strategy=cfg.strategy, keep_ratio=cfg.keep_ratio,
                        top_fraction=cfg.top_fraction, max_distance=cfg.max_distance)


def match_live(root: str | os.PathLike, embedder: Embedder, detector: LiveDetector, out_path: str | os.PathLike,
               config: LiveConfig | None = None) -> LiveRun:
    """Detect, embed and match every video under ``root`` against every item folder; write ``out_path``
    (result.json, atomically) and return it with box counts."""
    boxes = collect_live_boxes(root, embedder, detector, config)
    result = match_live_boxes(boxes, config)
    write_result_json(out_path, result)
    counts = {**boxes.counts, "matched_videos": len(result)}
    log.info("live matching: %s -> %s", counts, out_path)
    return LiveRun(result, counts)


def score_live(result: dict[str, Any] | str | os.PathLike, root: str | os.PathLike,
               iou_threshold: float = 0.5) -> dict[str, float]:
    """Score a result.json (dict or path) against the generated annotations under ``root``.

    Match precision/recall/F1 come from ``ground_truth.json`` (video -> item). For the boxes, any annotated
    frame of the true instance counts (the competition's single "frame_index" would reward guessing the
    annotator's frame): each predicted video's truth is rebuilt at its predicted frame, then scored with
    src.retrieval.live_scoring.score_live_matching."""
    root = Path(root)
    if not isinstance(result, dict):
        result = json.loads(Path(result).read_text())
    truth_path = root / "ground_truth.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{truth_path} is missing (not a generated live set?)")
    truth = json.loads(truth_path.read_text())
    aligned = {}
    for video_id, t in truth.items():
        aligned[video_id] = dict(t)
        pred = result.get(video_id)
        if not pred or pred.get("item_id") != t["item_id"]:
            continue
        item_ann = json.loads((root / "image_annotation" / f"{t['item_id']}.json").read_text())
        video_ann = json.loads((root / "video_annotation" / f"{video_id}.json").read_text())
        inst = {a["instance_id"] for im in item_ann["imgs"] for a in im["annotations"] if a["instance_id"] > 0}
        frame = next((f for f in video_ann["frames"] if f["frame_index"] == pred.get("frame_index")), None)
        frame_boxes = [a["box"] for a in (frame or {}).get("annotations", []) if a["instance_id"] in inst]
        if not frame_boxes:
            continue  # the predicted frame does not show the item: keep the canonical truth (a box miss)
        # The predicted frame box is compared with the instance's box in that frame (the best-overlapping
        # one if it appears twice), each shop image with its own instance box.
        fb = max(frame_boxes, key=lambda b: box_iou(b, pred["result"][0]["frame_box"]))
        aligned[video_id] = {
            "item_id": t["item_id"], "frame_index": pred["frame_index"],
            "result": [{"img_name": im["img_name"], "item_box": a["box"], "frame_box": fb}
                       for im in item_ann["imgs"] for a in im["annotations"] if a["instance_id"] in inst]}
    return score_live_matching(result, aligned, iou_threshold)
