"""Image-to-video product matching for the Taobao live-stream task.

Inputs: per item folder (``item_id``, the queries) its detected image boxes, and per video (the gallery) its
detected frame boxes, each with an embedding (L2-normalised here, so the distance is that of unit vectors).
Output: the competition's ``result.json`` layout::

    {video_id: {"item_id": str, "frame_index": int,
                "result": [{"img_name": str, "item_box": [x1, y1, x2, y2], "frame_box": [x1, y1, x2, y2]}]}}

``d`` = euclidean distance between L2-normalised embeddings (``d = sqrt(2 - 2 cos)``; ``max_distance = 1.12``
means ``cos >= 0.3728``). Two strategies:

``strategy="per_folder"`` (default): the rules of the 7th-place solution as it wrote them. Per folder with
``N`` image boxes:

a. every image box -> its nearest video box across *all* videos (a *pair*: d, video id, frame, box);
b. keep the nearest ``ceil(keep_ratio * N)`` pairs (at least one);
c. count video ids among them; rank the distinct videos by count and keep the first
   ``ceil(top_fraction * n_videos)`` (at least one), plus every video tied in count with the last one kept;
d. one video left -> that video; several -> the one owning the nearest kept pair;
e. ``img_name``/``item_box``: the folder's highest-detection-score image box (over all its N boxes, matched
   or not: the shop's clearest photo of the item);
f. ``frame_index``: the frame of the matched video's nearest kept pair; ``frame_box``: that frame's
   highest-detection-score box.

Then, over folders: a video claimed by several folders keeps only the nearest pair (the losers are not
re-matched to their second choice), and last, pairs with ``d > max_distance`` are dropped.

``strategy="per_video"``: the transposed variant this module used before (kept for comparison, see
experiments/live_matching/README.md). Per video: every image box of every folder -> its nearest box in this
video; keep the nearest ``ceil(keep_ratio * n_pairs)``, *then* drop ``d > max_distance``; vote over folders as
in (c)-(d); ``img_name``/``item_box`` is the highest-scoring image box among the matched folder's kept pairs;
the frame as in (f). Then an item claimed by several videos keeps the nearest video.

Ties and rounding (both strategies, so the answer never depends on dict or list order):

* ``ceil`` of ``keep_ratio * N`` and ``top_fraction * n`` is taken after subtracting 1e-9 (0.28 * 100 =
  28.000000000000004 gives 28), and is at least 1.
* Equal distances in (a) go to the smaller video id (string order), then the smaller frame index, then the
  earlier box in the input; in (b) to the earlier image box of the folder (input order); in (d) to the
  smaller video id; across folders to the smaller item id.
* Equal detection scores in (e)/(f) go to the earlier box in the input.
* Ids are compared as strings: a video id given as ``1`` and as ``"1"`` is one video.

Writing and scoring a ``result.json``: src/retrieval/live_scoring.py.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "STRATEGIES",
    "FrameBox",
    "ImageBox",
    "VideoMatch",
    "match_folder",
    "match_video",
    "match_videos",
    "resolve_item_conflicts",
    "resolve_video_conflicts",
    "to_result_json",
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
    """One folder <-> video decision; ``distance`` is the pair that decided it (rule d's nearest kept pair)."""

    video_id: str
    item_id: str
    distance: float
    img_name: str
    item_box: tuple
    frame_index: int
    frame_box: tuple


STRATEGIES = ("per_folder", "per_video")


def _at_least_one_ceil(x: float) -> int:
    # 0.28 * 100 = 28.000000000000004 must give 28, not 29.
    return max(1, math.ceil(x - 1e-9))


def _unit_rows(embeddings: Sequence[np.ndarray], what: str) -> np.ndarray:
    """Stack and L2-normalise (the rules measure distances between unit vectors); one clear error for bad input."""
    rows = [np.asarray(e, dtype=np.float64).reshape(-1) for e in embeddings]
    dims = sorted({len(r) for r in rows})
    if len(dims) > 1:
        raise ValueError(f"{what} embeddings have different dims {dims}")
    arr = np.stack(rows)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} embeddings contain NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} embeddings contain a zero vector (no direction to compare)")
    return arr / norms


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))  # clamp tiny negatives from rounding


def _nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the index of its nearest row of ``b`` (the first of equal distances) and the distance.

    The matrix formula is fast but off by up to ~3e-8 near 0 (sqrt of rounding), which would turn identical
    vectors' exact ties into arbitrary wins: it only shortlists, and the shortlist is measured directly."""
    approx = _pairwise_distances(a, b)
    col = np.empty(len(a), dtype=np.int64)
    d = np.empty(len(a))
    for r, row in enumerate(approx):
        cand = np.flatnonzero(row <= row.min() + 1e-6)
        exact = np.sqrt(((b[cand] - a[r]) ** 2).sum(1))
        k = int(exact.argmin())
        col[r], d[r] = cand[k], exact[k]
    return col, d


def _check_dims(image_emb: np.ndarray, video_emb: np.ndarray, video_name: str) -> None:
    if video_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"embedding dims differ: image boxes have dim {image_emb.shape[1]}, "
                         f"{video_name} boxes have dim {video_emb.shape[1]}")


def _validate_params(keep_ratio: float, top_fraction: float, max_distance: float, strategy: str = "per_folder"):
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if not max_distance >= 0.0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def _top_by_count(counts: Counter, top_fraction: float) -> set:
    """Rule (c): the first ceil(top_fraction * n) by count, plus every id tied with the last one kept."""
    ranked = sorted(counts.values(), reverse=True)
    cutoff = ranked[_at_least_one_ceil(top_fraction * len(ranked)) - 1]
    return {k for k, c in counts.items() if c >= cutoff}


def _best_box(boxes):
    return max(boxes, key=lambda b: b.det_score)  # max keeps the first of equal scores: input order


# --- per folder: the solution's rules ------------------------------------------------------------------------


class _Videos:
    """Every frame box of every video, ordered by (video id, frame index, input position): ``argmin`` then
    returns the first of equal distances, which is rule (a)'s documented tie-break."""

    def __init__(self, frames: Iterable[FrameBox]):
        indexed = [(str(f.video_id), int(f.frame_index), i, f) for i, f in enumerate(frames)]
        indexed.sort(key=lambda t: t[:3])
        self.video_ids = [t[0] for t in indexed]
        self.frame_indices = [t[1] for t in indexed]
        self.frames: dict[tuple[str, int], list[FrameBox]] = defaultdict(list)  # input order within a frame
        for vid, fi, _, f in indexed:
            self.frames[(vid, fi)].append(f)
        self.emb = _unit_rows([t[3].embedding for t in indexed], "video box") if indexed else None

    def __len__(self) -> int:
        return len(self.video_ids)


def _match_folder(item_id: str, boxes: Sequence[ImageBox], emb: np.ndarray, videos: _Videos,
                  keep_ratio: float, top_fraction: float) -> VideoMatch:
    col, d = _nearest(emb, videos.emb)  # (a): first minimum = smallest (video id, frame, position)
    kept = np.argsort(d, kind="stable")[: _at_least_one_ceil(keep_ratio * len(d))]  # (b): ties -> earlier box
    counts = Counter(videos.video_ids[col[i]] for i in kept)
    candidates = _top_by_count(counts, top_fraction)  # (c)
    # (d) the nearest kept pair among the candidates, equal distances -> smaller video id, then earlier pair.
    best_d, video_id, k = min((d[i], videos.video_ids[col[i]], k) for k, i in enumerate(kept)
                              if videos.video_ids[col[i]] in candidates)
    frame_index = videos.frame_indices[col[kept[k]]]  # (f)
    frame_box = _best_box(videos.frames[(video_id, frame_index)])
    img_box = _best_box(boxes)  # (e): the folder's most confident box, whichever pair it was in
    return VideoMatch(video_id=video_id, item_id=item_id, distance=float(best_d), img_name=str(img_box.img_name),
                      item_box=tuple(img_box.box), frame_index=int(frame_index), frame_box=tuple(frame_box.box))


def _folders(images: Mapping[Any, Sequence[ImageBox]]) -> list[tuple[str, list[ImageBox]]]:
    folders: dict[str, list[ImageBox]] = {}
    for item_id, boxes in images.items():
        key = str(item_id)
        if key in folders:
            raise ValueError(f"item id {item_id!r} appears twice (as {key!r} after str()): one folder, one key")
        folders[key] = list(boxes)
    if not any(folders.values()):
        raise ValueError("no image boxes: every item folder is empty")
    return sorted(folders.items())


def match_folder(item_id: str, boxes: Sequence[ImageBox], frames: Iterable[FrameBox], *, keep_ratio: float = 0.28,
                 top_fraction: float = 0.5) -> VideoMatch | None:
    """Rules (a)-(f) for one folder, before the rules across folders (so ``distance`` is not cut yet);
    ``None`` when the folder has no box or there is no video box."""
    _validate_params(keep_ratio, top_fraction, 0.0)
    videos = _Videos(frames)
    if not boxes or not len(videos):
        return None
    emb = _unit_rows([b.embedding for b in boxes], "image box")
    _check_dims(emb, videos.emb, "video")
    return _match_folder(str(item_id), boxes, emb, videos, keep_ratio, top_fraction)


def resolve_video_conflicts(matches: Iterable[VideoMatch], max_distance: float = math.inf) -> list[VideoMatch]:
    """The rules across folders: a video claimed by several folders keeps the nearest (equal distances ->
    smaller item id), then pairs with ``distance > max_distance`` are dropped. Sorted by video id."""
    best: dict[str, VideoMatch] = {}
    for m in matches:
        kept = best.get(m.video_id)
        if kept is None or (m.distance, m.item_id) < (kept.distance, kept.item_id):
            best[m.video_id] = m
    return sorted((m for m in best.values() if m.distance <= max_distance), key=lambda m: m.video_id)


def _match_per_folder(images, frames, keep_ratio, top_fraction, max_distance) -> list[VideoMatch]:
    folders = _folders(images)
    videos = _Videos(frames)
    if not len(videos):
        return []
    matches = []
    for item_id, boxes in folders:
        if not boxes:
            continue
        emb = _unit_rows([b.embedding for b in boxes], f"folder {item_id} image box")
        _check_dims(emb, videos.emb, "video")
        matches.append(_match_folder(item_id, boxes, emb, videos, keep_ratio, top_fraction))
    return resolve_video_conflicts(matches, max_distance)


# --- per video: the transposed variant (strategy="per_video") ------------------------------------------------


class _Gallery:
    """Image boxes of all folders, flattened once and shared by every video."""

    def __init__(self, images: Mapping[str, Sequence[ImageBox]]):
        self.item_ids: list[str] = []
        self.boxes: list[ImageBox] = []
        for item_id, boxes in _folders(images):
            for b in boxes:
                self.item_ids.append(item_id)
                self.boxes.append(b)
        self.emb = _unit_rows([b.embedding for b in self.boxes], "image box")


def _match_one(gallery: _Gallery, frames: Sequence[FrameBox], keep_ratio, top_fraction, max_distance):
    video_ids = {str(f.video_id) for f in frames}
    if len(video_ids) != 1:
        raise ValueError(f"frames of one video expected, got video ids {sorted(video_ids)}")
    video_id = next(iter(video_ids))
    video_emb = _unit_rows([f.embedding for f in frames], f"video {video_id} frame box")
    _check_dims(gallery.emb, video_emb, f"video {video_id}")
    nearest, d = _nearest(gallery.emb, video_emb)  # nearest video box per image box

    kept = np.argsort(d, kind="stable")[: _at_least_one_ceil(keep_ratio * len(d))]
    kept = kept[d[kept] <= max_distance]  # this variant cuts far pairs before voting
    if len(kept) == 0:
        return None

    candidates = _top_by_count(Counter(gallery.item_ids[i] for i in kept), top_fraction)
    best_d = min(d[i] for i in kept if gallery.item_ids[i] in candidates)
    item_id = min(gallery.item_ids[i] for i in kept if gallery.item_ids[i] in candidates and d[i] == best_d)
    item_pairs = [i for i in kept if gallery.item_ids[i] == item_id]  # by distance

    frame_index = int(frames[nearest[item_pairs[0]]].frame_index)
    frame_box = _best_box([f for f in frames if int(f.frame_index) == frame_index])
    # Highest detection score among the item's kept pairs; among equal scores the nearer pair.
    img_box = gallery.boxes[max(item_pairs, key=lambda i: (gallery.boxes[i].det_score, -d[i]))]
    return VideoMatch(video_id=video_id, item_id=item_id, distance=float(best_d), img_name=str(img_box.img_name),
                      item_box=tuple(img_box.box), frame_index=frame_index, frame_box=tuple(frame_box.box))


def match_video(
    images: Mapping[str, Sequence[ImageBox]],
    frames: Sequence[FrameBox],
    *,
    keep_ratio: float = 0.28,
    top_fraction: float = 0.5,
    max_distance: float = 1.12,
) -> VideoMatch | None:
    """The per-video variant for one video (``frames``: all boxes of that video); ``None`` if no item qualifies."""
    _validate_params(keep_ratio, top_fraction, max_distance)
    if not frames:
        return None
    return _match_one(_Gallery(images), frames, keep_ratio, top_fraction, max_distance)


def resolve_item_conflicts(matches: Iterable[VideoMatch]) -> list[VideoMatch]:
    """The per-video variant's last rule: one video per item, the nearest (ties broken by video id)."""
    best: dict[str, VideoMatch] = {}
    for m in matches:
        kept = best.get(m.item_id)
        if kept is None or (m.distance, m.video_id) < (kept.distance, kept.video_id):
            best[m.item_id] = m
    return sorted(best.values(), key=lambda m: m.video_id)


def _match_per_video(images, frames, keep_ratio, top_fraction, max_distance) -> list[VideoMatch]:
    gallery = _Gallery(images)
    by_video: dict[str, list[FrameBox]] = defaultdict(list)
    for f in frames:
        by_video[str(f.video_id)].append(f)
    matches = [_match_one(gallery, fs, keep_ratio, top_fraction, max_distance) for fs in by_video.values()]
    return resolve_item_conflicts(m for m in matches if m is not None)


# --- both ----------------------------------------------------------------------------------------------------


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
    strategy: str = "per_folder",
    keep_ratio: float = 0.28,
    top_fraction: float = 0.5,
    max_distance: float = 1.12,
) -> dict[str, dict[str, Any]]:
    """Match item folders to videos -> ``result.json`` dict (see the module docstring for both strategies).

    Args:
        images: ``{item_id: [ImageBox, ...]}``, the shop image detections per item folder.
        frames: every video's frame detections; each carries its ``video_id``.
        strategy: "per_folder" (the solution's rules) or "per_video" (the transposed variant).
        keep_ratio: share of pairs kept, nearest first (rule b).
        top_fraction: share of the distinct voted ids kept by count (rule c).
        max_distance: pairs farther than this are dropped (last for per_folder, before voting for per_video).
    """
    _validate_params(keep_ratio, top_fraction, max_distance, strategy)
    run = _match_per_folder if strategy == "per_folder" else _match_per_video
    return to_result_json(run(images, list(frames), keep_ratio, top_fraction, max_distance))
