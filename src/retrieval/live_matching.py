"""Image-to-video product matching for the Taobao live-stream task (rules of a 7th-place solution).

Inputs: per item folder (``item_id``) its detected image boxes, and per video its detected frame boxes,
each with an L2-normalised embedding. Output: the competition's ``result.json`` layout::

    {video_id: {"item_id": str, "frame_index": int,
                "result": [{"img_name": str, "item_box": [x1, y1, x2, y2], "frame_box": [x1, y1, x2, y2]}]}}

Rules, each number a parameter (``d`` = euclidean distance between embeddings; on unit vectors
``d = sqrt(2 - 2 cos)``, so ``max_distance = 1.12`` means ``cos >= 0.3728``):

1. Per video, independently (each video is matched to at most one item): for every image box of every
   folder, its nearest box in this video -> one *pair* (image box, video box, d).
2. Keep the nearest ``ceil(keep_ratio * n_pairs)`` pairs (at least one), then drop pairs with
   ``d > max_distance``.
3. Count item ids among the kept pairs; rank the distinct items by count and keep the first
   ``ceil(top_fraction * n_items)`` (at least one), plus any item tied with the last one kept.
4. None left -> the video has no match; one -> that item; several -> the item owning the single
   nearest kept pair (ties broken by item id, for determinism).
5. Boxes: the matched item's kept pair with the smallest ``d`` gives the matched frame (``frame_index``);
   ``frame_box`` is that frame's box with the highest detection score; ``img_name``/``item_box`` is the
   image box with the highest detection score among the item's kept pairs (boxes that matched this
   video, so a high-scoring detection of something else in the shop image cannot win).
6. Across videos: an item claimed by several videos keeps only the nearest video (smallest ``d`` from
   rule 4); the other videos get no match (they are not re-matched to their second choice).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "FrameBox",
    "ImageBox",
    "VideoMatch",
    "box_iou",
    "match_video",
    "match_videos",
    "resolve_item_conflicts",
    "score_live_matching",
    "to_result_json",
    "write_result_json",
]

Box = Sequence[float]  # (x1, y1, x2, y2)


@dataclass(frozen=True, eq=False)
class ImageBox:
    """One detection in a shop image of an item folder."""

    img_name: str
    box: Box
    det_score: float
    embedding: np.ndarray


@dataclass(frozen=True, eq=False)
class FrameBox:
    """One detection in a video frame."""

    video_id: str
    frame_index: int
    box: Box
    det_score: float
    embedding: np.ndarray


@dataclass(frozen=True)
class VideoMatch:
    """The decision for one video; ``distance`` is the matched item's nearest kept pair."""

    video_id: str
    item_id: str
    distance: float
    img_name: str
    item_box: tuple
    frame_index: int
    frame_box: tuple


def _ceil(x: float) -> int:
    # 0.28 * 100 = 28.000000000000004 must give 28, not 29.
    return math.ceil(x - 1e-9)


def _stack(embeddings: list[np.ndarray], what: str) -> np.ndarray:
    arr = np.asarray(np.stack([np.asarray(e, dtype=np.float64).reshape(-1) for e in embeddings]))
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} embeddings contain NaN or inf")
    return arr


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))  # clamp tiny negatives from rounding


class _Gallery:
    """Image boxes of all folders, flattened once and shared by every video."""

    def __init__(self, images: Mapping[str, Sequence[ImageBox]]):
        self.item_ids: list[str] = []
        self.boxes: list[ImageBox] = []
        for item_id, boxes in images.items():
            for b in boxes:
                self.item_ids.append(str(item_id))
                self.boxes.append(b)
        if not self.boxes:
            raise ValueError("no image boxes: every item folder is empty")
        self.emb = _stack([b.embedding for b in self.boxes], "image box")


def _validate_params(keep_ratio: float, top_fraction: float, max_distance: float) -> None:
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if not max_distance >= 0.0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")


def _match_one(gallery: _Gallery, frames: Sequence[FrameBox], keep_ratio, top_fraction, max_distance):
    video_ids = {f.video_id for f in frames}
    if len(video_ids) != 1:
        raise ValueError(f"frames of one video expected, got video ids {sorted(video_ids)}")
    video_id = next(iter(video_ids))
    video_emb = _stack([f.embedding for f in frames], f"video {video_id} frame box")
    if video_emb.shape[1] != gallery.emb.shape[1]:
        raise ValueError(
            f"embedding dims differ: image boxes have dim {gallery.emb.shape[1]}, "
            f"video {video_id} boxes have dim {video_emb.shape[1]}"
        )
    dist = _pairwise_distances(gallery.emb, video_emb)
    nearest = dist.argmin(axis=1)  # rule 1: nearest video box per image box
    d = dist[np.arange(len(nearest)), nearest]

    n_keep = max(1, _ceil(keep_ratio * len(d)))
    kept = np.argsort(d, kind="stable")[:n_keep]  # rule 2
    kept = kept[d[kept] <= max_distance]
    if len(kept) == 0:
        return None

    counts = Counter(gallery.item_ids[i] for i in kept)  # rule 3
    ranked = sorted(counts.values(), reverse=True)
    cutoff = ranked[max(1, _ceil(top_fraction * len(ranked))) - 1]
    candidates = {item for item, c in counts.items() if c >= cutoff}

    # Rule 4: kept is sorted by distance, so the first candidate pair is the nearest.
    best_d = min(d[i] for i in kept if gallery.item_ids[i] in candidates)
    item_id = min(gallery.item_ids[i] for i in kept if gallery.item_ids[i] in candidates and d[i] == best_d)
    item_pairs = [i for i in kept if gallery.item_ids[i] == item_id]

    frame_index = frames[nearest[item_pairs[0]]].frame_index  # rule 5
    frame_box = max((f for f in frames if f.frame_index == frame_index), key=lambda f: f.det_score)
    # Highest detection score; among equal scores the nearer pair (stable: item_pairs is by distance).
    img_pair = max(item_pairs, key=lambda i: (gallery.boxes[i].det_score, -d[i]))
    img_box = gallery.boxes[img_pair]
    return VideoMatch(
        video_id=video_id,
        item_id=item_id,
        distance=float(best_d),
        img_name=str(img_box.img_name),
        item_box=tuple(img_box.box),
        frame_index=int(frame_index),
        frame_box=tuple(frame_box.box),
    )


def match_video(
    images: Mapping[str, Sequence[ImageBox]],
    frames: Sequence[FrameBox],
    *,
    keep_ratio: float = 0.28,
    top_fraction: float = 0.5,
    max_distance: float = 1.12,
) -> VideoMatch | None:
    """Rules 1-5 for one video (``frames``: all boxes of that video); ``None`` if no item qualifies."""
    _validate_params(keep_ratio, top_fraction, max_distance)
    if not frames:
        return None
    return _match_one(_Gallery(images), frames, keep_ratio, top_fraction, max_distance)


def resolve_item_conflicts(matches: Iterable[VideoMatch]) -> list[VideoMatch]:
    """Rule 6: one video per item, the nearest (ties broken by video id)."""
    best: dict[str, VideoMatch] = {}
    for m in matches:
        kept = best.get(m.item_id)
        if kept is None or (m.distance, m.video_id) < (kept.distance, kept.video_id):
            best[m.item_id] = m
    return sorted(best.values(), key=lambda m: m.video_id)


def _plain(values) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values]  # numpy scalars -> JSON numbers


def to_result_json(matches: Iterable[VideoMatch]) -> dict[str, dict[str, Any]]:
    """The competition layout, one entry per matched video."""
    return {
        m.video_id: {
            "item_id": m.item_id,
            "frame_index": m.frame_index,
            "result": [{"img_name": m.img_name, "item_box": _plain(m.item_box), "frame_box": _plain(m.frame_box)}],
        }
        for m in matches
    }


def match_videos(
    images: Mapping[str, Sequence[ImageBox]],
    frames: Iterable[FrameBox],
    *,
    keep_ratio: float = 0.28,
    top_fraction: float = 0.5,
    max_distance: float = 1.12,
) -> dict[str, dict[str, Any]]:
    """All rules over every video in ``frames`` (grouped by ``video_id``) -> ``result.json`` dict.

    Args:
        images: ``{item_id: [ImageBox, ...]}``, the shop image detections per item folder.
        frames: every video's frame detections; each carries its ``video_id``.
        keep_ratio, top_fraction, max_distance: see the module docstring (rules 2-3).
    """
    _validate_params(keep_ratio, top_fraction, max_distance)
    gallery = _Gallery(images)
    by_video: dict[str, list[FrameBox]] = defaultdict(list)
    for f in frames:
        by_video[str(f.video_id)].append(f)
    matches = [_match_one(gallery, fs, keep_ratio, top_fraction, max_distance) for fs in by_video.values()]
    return to_result_json(resolve_item_conflicts(m for m in matches if m is not None))


def write_result_json(path: str | os.PathLike, result: Mapping[str, Any]) -> None:
    """Write ``result`` as JSON atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def box_iou(a: Box, b: Box) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes (0 for empty or degenerate ones).

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
    0.3333333333333333
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _boxes_correct(pred: Mapping[str, Any], truth: Mapping[str, Any], thr: float) -> bool:
    if pred.get("frame_index") != truth.get("frame_index") or not pred.get("result"):
        return False
    return all(
        any(
            p["img_name"] == t["img_name"]
            and box_iou(p["item_box"], t["item_box"]) >= thr
            and box_iou(p["frame_box"], t["frame_box"]) >= thr
            for t in truth.get("result", [])
        )
        for p in pred["result"]
    )


def score_live_matching(
    result: Mapping[str, Mapping[str, Any]],
    ground_truth: Mapping[str, Mapping[str, Any]],
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Precision/recall/F1 of video -> item matches, and box accuracy.

    ``ground_truth`` has the ``result.json`` layout; a video absent from it, or with a falsy
    ``item_id``, has no item. A predicted video is:

    * a *match hit* if its ``item_id`` equals the ground truth's;
    * a *full hit* if also ``frame_index`` is equal and every predicted ``{img_name, item_box,
      frame_box}`` has a ground-truth entry with the same ``img_name``, ``item_box`` IoU >= thr and
      ``frame_box`` IoU >= thr.

    Returns ``match_precision = hits / predicted videos``, ``match_recall = hits / videos with an item``,
    ``match_f1``, ``box_accuracy = full hits / match hits``, and ``full_precision``/``full_recall``/
    ``full_f1`` counting full hits only. Empty denominators give 0.
    """
    positives = {v for v, t in ground_truth.items() if t.get("item_id")}
    match_hits = [v for v, p in result.items() if v in positives and p.get("item_id") == ground_truth[v]["item_id"]]
    full_hits = [v for v in match_hits if _boxes_correct(result[v], ground_truth[v], iou_threshold)]
    n_pred, n_pos = len(result), len(positives)
    mp = len(match_hits) / n_pred if n_pred else 0.0
    mr = len(match_hits) / n_pos if n_pos else 0.0
    fp = len(full_hits) / n_pred if n_pred else 0.0
    fr = len(full_hits) / n_pos if n_pos else 0.0
    return {
        "match_precision": mp,
        "match_recall": mr,
        "match_f1": _f1(mp, mr),
        "box_accuracy": len(full_hits) / len(match_hits) if match_hits else 0.0,
        "full_precision": fp,
        "full_recall": fr,
        "full_f1": _f1(fp, fr),
    }
