"""A synthetic live-stream product set in the Taobao live-stream layout (Tianchi "Taobao live product
recognition"): shop image folders per item and short videos in which the item's product moves across a
background among distractor products, with per-frame boxes and instance ids.

Layout under ``<root>/<tag>/`` (tag = version + hash of the spec)::

    image/<item_id>/<n>.jpg                 shop photos of the item (the product, sometimes a distractor)
    image_annotation/<item_id>.json         {"item_id", "imgs": [{"img_name", "annotations": [ANN, ...]}]}
    video/<video_id>.mp4                    (or .avi when the mp4v encoder is unavailable)
    video_annotation/<video_id>.json        {"video_id", "video_file", "frames": [{"frame_index", "annotations"}]}
    ground_truth.json                       result.json layout, one entry per video that shows an item
    spec.json, DONE                         DONE is written last; the folder is renamed into place

ANN = {"label": category, "box": [x1, y1, x2, y2], "instance_id": int, "sku_id": int, "display": 1,
"viewpoint": 0}. ``instance_id > 0`` links a product in a video to the same product in its item's photos;
0 marks distractors. Each video shows at most one item (its target); distractors come from SKUs that have no
item folder, so the ground truth is unambiguous. ``ground_truth.json`` names the frame where the target is
largest; `src.recognition.live.score_live` also accepts any other annotated frame of the target.
Same spec, same bytes (apart from the video container): every draw comes from an RNG seeded by (seed, kind, index).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from src.data.generate_once import generate_once, spec_tag
from src.data.retail_world import photometric as ph
from src.data.retail_world.catalogue import SKU, make_catalogue
from src.data.retail_world.render import render_package

log = logging.getLogger(__name__)
LIVE_VERSION = 1
_KIND = {"assign": 1, "image": 2, "video": 3}


@dataclass(frozen=True)
class LiveSpec:
    seed: int = 0
    num_families: int = 12
    variants_per_family: int = 2
    num_items: int = 6  # item folders; items beyond num_videos are never shown (harder retrieval)
    num_videos: int = 4  # videos showing one item each
    negative_videos: int = 0  # videos with distractors only (no item)
    images_per_item: int = 3
    frames: int = 48
    frame_size: tuple[int, int] = (144, 192)  # (h, w)
    image_size: tuple[int, int] = (160, 160)  # shop photo (h, w)
    fps: int = 12
    distractors: tuple[int, int] = (1, 2)  # static distractor products per video (min, max)
    second_product_prob: float = 0.5  # chance of a second moving (distractor) product in a video
    codec: str = "mp4v"

    def __post_init__(self) -> None:
        n_skus = self.num_families * self.variants_per_family
        if not 0 < self.num_videos <= self.num_items:
            raise ValueError(f"need 0 < num_videos <= num_items, got {self.num_videos} and {self.num_items}")
        if self.num_items >= n_skus:
            raise ValueError(f"num_items ({self.num_items}) must leave SKUs for distractors ({n_skus} SKUs)")
        if self.frames < 2 or self.images_per_item < 1:
            raise ValueError("need at least 2 frames per video and 1 image per item")

    @property
    def tag(self) -> str:
        return spec_tag("live", LIVE_VERSION, self)


def _rng(spec: LiveSpec, kind: str, idx: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _KIND[kind], idx])


def _ann(sku: SKU, box, instance_id: int) -> dict:
    return {"label": sku.category, "box": [int(v) for v in box], "instance_id": int(instance_id),
            "sku_id": sku.sku_id, "display": 1, "viewpoint": 0}


def _sprite(sku: SKU, width: int, rng: np.random.Generator, rotation: float, max_hw: tuple[int, int]) -> np.ndarray:
    """A rotated product cut to its alpha box, shrunk to fit ``max_hw`` (tall tubes in short frames)."""
    rgba = ph.warp_rgba(render_package(sku, width), rng, max_rotation=rotation, max_perspective=0.05)
    x0, y0, x1, y1 = ph.alpha_bbox(rgba)
    rgba = rgba[y0:y1, x0:x1]
    scale = min(1.0, max_hw[0] / rgba.shape[0], max_hw[1] / rgba.shape[1])
    if scale < 1.0:
        size = (max(2, int(rgba.shape[1] * scale)), max(2, int(rgba.shape[0] * scale)))
        rgba = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)
    return rgba


def _paste(img: np.ndarray, sprite: np.ndarray, x: int, y: int) -> tuple[int, int, int, int] | None:
    """Paste and return the visible box (None if less than half of the sprite is inside the image)."""
    h, w = img.shape[:2]
    sh, sw = sprite.shape[:2]
    ph.paste_rgba(img, sprite, x, y)
    box = (max(x, 0), max(y, 0), min(x + sw, w), min(y + sh, h))
    visible = max(0, box[2] - box[0]) * max(0, box[3] - box[1])
    return box if visible >= 0.5 * sw * sh else None


def _shop_image(spec: LiveSpec, sku: SKU, distractor: SKU, rng: np.random.Generator, instance_id: int):
    h, w = spec.image_size
    img = ph.background(h, w, rng)
    anns = []
    if rng.random() < 0.3:  # a small unrelated product in the corner of some shop photos
        d = _sprite(distractor, int(w * rng.uniform(0.15, 0.22)), rng, 10.0, (h // 3, w // 3))
        box = _paste(img, d, int(rng.integers(0, max(1, w - d.shape[1]))), int(rng.integers(0, max(1, h - d.shape[0]))))
        if box:
            anns.append(_ann(distractor, box, 0))
    s = _sprite(sku, int(w * rng.uniform(0.3, 0.45)), rng, 12.0, (int(0.9 * h), int(0.9 * w)))
    x = int(rng.integers(2, max(3, w - s.shape[1] - 2)))
    y = int(rng.integers(2, max(3, h - s.shape[0] - 2)))
    anns.append(_ann(sku, _paste(img, s, x, y), instance_id))
    return ph.blur(ph.lighting(img, rng), rng), anns


def _write_video(path: Path, frames: list[np.ndarray], fps: int, codec: str) -> Path:
    """Write RGB frames; falls back to MJPG/.avi if the codec cannot be opened here. Returns the file."""
    h, w = frames[0].shape[:2]
    for fourcc, suffix in ((codec, path.suffix), ("MJPG", ".avi")):
        target = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
        if writer.isOpened():
            for f in frames:
                writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            writer.release()
            return target
        writer.release()
        target.unlink(missing_ok=True)
    raise RuntimeError(f"cannot open a video writer for {path} with {codec!r} or MJPG")


def _video(spec: LiveSpec, target: SKU | None, instance_id: int, distractor_pool: list[SKU],
           rng: np.random.Generator):
    h, w = spec.frame_size
    bg = ph.background(h, w, rng)
    statics = []
    for _ in range(int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))):
        d = distractor_pool[int(rng.integers(len(distractor_pool)))]
        s = _sprite(d, int(w * rng.uniform(0.1, 0.16)), rng, 15.0, (h // 3, w // 4))
        x, y = int(rng.integers(0, max(1, w - s.shape[1]))), int(rng.integers(0, max(1, h - s.shape[0])))
        statics.append((d, s, x, y))
    movers = []  # (sku, sprite, instance_id, start xy, end xy, start scale, end scale)
    plan = [(target, instance_id)] if target is not None else []
    if target is None or rng.random() < spec.second_product_prob:
        plan.append((distractor_pool[int(rng.integers(len(distractor_pool)))], 0))
    for sku, inst in plan:
        # The presented item is held closest to the camera: larger than any distractor.
        size = rng.uniform(0.22, 0.3) if inst else rng.uniform(0.13, 0.19)
        s = _sprite(sku, int(w * size), rng, 10.0, (int(0.65 * h), w // 3))
        start = (rng.uniform(-0.2, 0.3) * w, rng.uniform(0.0, 0.5) * h)
        end = (rng.uniform(0.4, 0.9) * w - s.shape[1] / 2, rng.uniform(0.0, 0.5) * h)
        if rng.random() < 0.5:
            start, end = end, start
        movers.append((sku, s, inst, start, end, rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.2)))
    light_seed = int(rng.integers(1 << 31))
    frames, annotations = [], []
    for t in range(spec.frames):
        a = t / (spec.frames - 1)
        img = bg.copy()
        anns = []
        for sku, s, x, y in statics:
            box = _paste(img, s, x, y)
            if box:
                anns.append(_ann(sku, box, 0))
        for sku, s, inst, (x0, y0), (x1, y1), s0, s1 in reversed(movers):  # the presented item in front
            scale = s0 + a * (s1 - s0)
            sprite = cv2.resize(s, (max(2, int(s.shape[1] * scale)), max(2, int(s.shape[0] * scale))),
                                interpolation=cv2.INTER_LINEAR)
            box = _paste(img, sprite, int(round(x0 + a * (x1 - x0))), int(round(y0 + a * (y1 - y0))))
            if box:
                anns.append(_ann(sku, box, inst))
        frames.append(ph.lighting(img, np.random.default_rng(light_seed)))  # same light in every frame
        annotations.append({"frame_index": t, "annotations": anns})
    return frames, annotations


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def generate_live(spec: LiveSpec, out: Path) -> None:
    skus = make_catalogue(spec.num_families, spec.variants_per_family, spec.seed)
    rng = _rng(spec, "assign", 0)
    order = rng.permutation(len(skus))
    item_skus = [skus[int(i)] for i in order[: spec.num_items]]
    pool = [skus[int(i)] for i in order[spec.num_items:]]
    item_ids = [f"{i:06d}" for i in range(spec.num_items)]
    shown = rng.permutation(spec.num_items)[: spec.num_videos]  # which items appear in a video
    n_videos = spec.num_videos + spec.negative_videos
    video_ids = [f"{500000 + v:06d}" for v in range(n_videos)]
    image_boxes: dict[str, dict[str, list]] = {}
    for i, (item_id, sku) in enumerate(zip(item_ids, item_skus)):
        imgs = []
        for n in range(spec.images_per_item):
            r = _rng(spec, "image", i * 1000 + n)
            img, anns = _shop_image(spec, sku, pool[int(r.integers(len(pool)))], r, instance_id=i + 1)
            (out / "image" / item_id).mkdir(parents=True, exist_ok=True)
            (out / "image" / item_id / f"{n}.jpg").write_bytes(ph.jpeg_bytes(img, 92))
            imgs.append({"img_name": f"{n}.jpg", "annotations": anns})
        _write_json(out / "image_annotation" / f"{item_id}.json", {"item_id": item_id, "imgs": imgs})
        image_boxes[item_id] = {im["img_name"]: [a["box"] for a in im["annotations"] if a["instance_id"] == i + 1]
                                for im in imgs}
    truth = {}
    (out / "video").mkdir(parents=True, exist_ok=True)
    for v, video_id in enumerate(video_ids):
        item = int(shown[v]) if v < spec.num_videos else None
        target = item_skus[item] if item is not None else None
        frames, anns = _video(spec, target, (item + 1) if item is not None else 0, pool, _rng(spec, "video", v))
        video_file = _write_video(out / "video" / f"{video_id}.mp4", frames, spec.fps, spec.codec)
        _write_json(out / "video_annotation" / f"{video_id}.json",
                     {"video_id": video_id, "video_file": f"video/{video_file.name}", "frames": anns})
        if item is None:
            continue
        inst = item + 1
        sized = [(max((b[2] - b[0]) * (b[3] - b[1]) for b in [a["box"] for a in f["annotations"]
                                                            if a["instance_id"] == inst] or [[0, 0, 0, 0]]), f)
                 for f in anns]
        area, best = max(sized, key=lambda x: x[0])
        frame_box = next(a["box"] for a in best["annotations"] if a["instance_id"] == inst)
        truth[video_id] = {"item_id": item_ids[item], "frame_index": best["frame_index"],
                           "result": [{"img_name": name, "item_box": boxes[0], "frame_box": frame_box}
                                      for name, boxes in image_boxes[item_ids[item]].items() if boxes]}
    _write_json(out / "ground_truth.json", truth)
    _write_json(out / "spec.json", asdict(spec))


def ensure_live(root: str | os.PathLike, spec: LiveSpec | None = None, **overrides) -> Path:
    """Generate the live set under ``root`` unless a complete copy for this spec exists; return its folder.
    Written into a temporary sibling that is renamed into place (an interrupted run leaves nothing that
    looks complete)."""
    spec = spec or LiveSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    return generate_once(root, spec.tag, lambda tmp: generate_live(spec, tmp), "live-stream set")
