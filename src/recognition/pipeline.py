"""PP-ShiTu style recognition: image -> detector boxes (+ the whole image) -> crops -> batched embeddings ->
top-k gallery search -> open-set threshold -> NMS -> recognised products and unknown boxes.

Decisions (each a parameter):

* The whole image is a candidate like any detection (PP-ShiTu always adds it), so a close-up of one product
  is recognised even when the detector misses it. In a photo of several products the whole-image crop is a
  blend of them; if it passed the threshold it would add a phantom line to a receipt. So its result is kept
  only when no detected box was recognised, and it is never reported as an unknown item.
* A box is recognised when its top-1 gallery score reaches the index threshold (GalleryIndex.accepted);
  otherwise it is an *unknown* item with its best guess, never silently dropped or priced.
* A recognised box whose score beats the best *other SKU* (the runner-up product: usually the look-alike
  sibling) by less than the gallery's margin (``GalleryIndex.margin``, calibrated by Gallery.calibrate_margin)
  is *uncertain*: listed with both candidates, never priced. A wrong line above the threshold is most often
  such a look-alike won by a hair. No margin stored: nothing is uncertain.
* NMS over recognised boxes by SKU (torchvision batched_nms, ``nms_iou``): two detections of one product
  count once. Then class-agnostic NMS at ``cross_sku_iou``: one object matched to two look-alike SKUs keeps
  the better match. Unknown boxes overlapping a recognised one by ``nms_iou`` are duplicates and dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou, nms

from src.data.images import check_rgb_image, crop_box
from src.inference.detector import Detections, DetectorLike
from src.inference.embedder import Embedder
from src.retrieval.index import GalleryIndex

__all__ = ["WHOLE_IMAGE_MODES", "Recognition", "RecognitionPipeline"]

WHOLE_IMAGE_MODES = ("always", "fallback", "never")


@dataclass
class Recognition:
    """``items``: recognised products ``{box, sku, name, category, price, score, margin, det_score, source}``,
    best score first (``margin``: score minus the runner-up SKU's, None if no other SKU); ``uncertain``: boxes
    above the threshold but within the margin of another SKU, the same fields plus ``runner_up {sku, name,
    price, score}``; ``unknown``: boxes below the threshold ``{box, score, det_score, best_guess}``;
    ``timings`` in milliseconds (detect, embed, search, total)."""

    width: int
    height: int
    items: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    uncertain: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "items": self.items, "uncertain": self.uncertain,
                "unknown": self.unknown, "timings": self.timings}


def _box_list(box: Sequence[float]) -> list[float]:
    return [round(float(v), 1) for v in box]


class RecognitionPipeline:
    """Args:
        embedder: crops -> embeddings; its fingerprint must match the index's.
        index: the product gallery (with its open-set threshold).
        detector: ``detect(image) -> Detections``; None = whole image only.
        whole_image: "always" (PP-ShiTu: a candidate every time), "fallback" (only when the detector
            returns nothing), "never".
        top_k: neighbours fetched per crop (the top-1 decides; the rest are for callers' inspection).
        nms_iou: IoU for per-SKU NMS and for dropping unknowns that duplicate a recognised box.
        cross_sku_iou: IoU above which one object recognised as two SKUs keeps only the better score.
        min_box_size: boxes narrower or lower than this (pixels) are not embedded.
        max_boxes: at most this many detections (highest detector scores) per image.
        runner_up_depth: neighbours searched for the best other SKU (the margin test); if all are one SKU, the
            runner-up is taken to score as the last of them (a lower bound on the margin).
    """

    def __init__(self, embedder: Embedder, index: GalleryIndex, detector: DetectorLike | None = None, *,
                 whole_image: str = "always", top_k: int = 5, nms_iou: float = 0.5, cross_sku_iou: float = 0.7,
                 min_box_size: float = 4.0, max_boxes: int = 50, runner_up_depth: int = 32) -> None:
        if whole_image not in WHOLE_IMAGE_MODES:
            raise ValueError(f"whole_image must be one of {WHOLE_IMAGE_MODES}, got {whole_image!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        index.check_compatible(fingerprint=embedder.fingerprint, dim=embedder.dim)  # fail at startup, not per call
        self.embedder, self.index, self.detector = embedder, index, detector
        self.whole_image, self.top_k = whole_image, int(top_k)
        self.nms_iou, self.cross_sku_iou = float(nms_iou), float(cross_sku_iou)
        self.min_box_size, self.max_boxes = float(min_box_size), int(max_boxes)
        self.runner_up_depth = int(runner_up_depth)

    def _candidates(self, image: np.ndarray, boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str]:
        h, w = image.shape[:2]
        if boxes is not None:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            dets = Detections(boxes, np.ones(len(boxes), np.float32), np.ones(len(boxes), np.int64))
            source = "given"
        elif self.detector is not None:
            dets, source = self.detector.detect(image), "detector"
        else:
            dets, source = Detections.empty(), "detector"
        b = dets.boxes.astype(np.float32).copy()
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        ok = ((b[:, 2] - b[:, 0]) >= self.min_box_size) & ((b[:, 3] - b[:, 1]) >= self.min_box_size)
        b, s = b[ok], dets.scores[ok].astype(np.float32)
        order = np.argsort(-s, kind="stable")[: self.max_boxes]
        return b[order], s[order], source

    def _search(self, emb: np.ndarray) -> tuple[list, np.ndarray, np.ndarray, list, float | None]:
        """Top-1 metadata, score and acceptance per crop, the runner-up SKU's ``(metadata, score)`` per crop
        (None when the gallery holds one SKU; both from one state of the gallery) and the margin in force. An
        empty gallery recognises nothing: every crop is unknown (also when the last product is removed while
        this request runs)."""
        n = len(emb)
        margin = getattr(self.index, "margin", None)
        nothing = [None] * n, np.full(n, -np.inf), np.zeros(n, bool), [None] * n, margin
        if len(self.index) == 0:
            return nothing
        try:  # one search: top-1 and runner-up from the same state of the gallery
            depth = max(self.top_k, self.runner_up_depth)
            res = self.index.search(emb, depth, fingerprint=self.embedder.fingerprint)
        except ValueError:
            if len(self.index) == 0:
                return nothing
            raise
        runner_up = []
        for rows, scores in zip(res.metadata, res.scores):
            found = self._runner_up(rows, scores)
            if found is None and rows[-1] is not None:  # cut at the depth: another SKU scores at most the last
                found = (None, float(scores[-1]))
            runner_up.append(found)
        return [m[0] for m in res.metadata], res.scores[:, 0], res.accepted[:, 0], runner_up, margin

    @staticmethod
    def _runner_up(rows: list, scores: np.ndarray) -> tuple[dict | None, float] | None:
        """The best neighbour of another SKU than the top-1's, as ``(metadata, score)``; None if none."""
        if not rows or rows[0] is None:
            return None
        for row, score in zip(rows[1:], scores[1:]):
            if row is not None and row["sku"] != rows[0]["sku"]:
                return row, float(score)
        return None

    def recognize(self, image: np.ndarray, boxes: np.ndarray | None = None) -> Recognition:
        """Recognise the products in an RGB uint8 image. ``boxes`` (xyxy pixels) replace the detector."""
        image = check_rgb_image(image)
        if boxes is None and self.detector is None and self.whole_image == "never":
            raise ValueError("no boxes given, no detector and whole_image='never': nothing to recognise")
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        det_boxes, det_scores, source = self._candidates(image, boxes)
        t1 = time.perf_counter()
        n_det = len(det_boxes)
        add_whole = self.whole_image == "always" or (self.whole_image == "fallback" and n_det == 0)
        all_boxes = np.concatenate([det_boxes, np.array([[0, 0, w, h]], np.float32)]) if add_whole else det_boxes
        all_det = np.concatenate([det_scores, np.ones(1, np.float32)]) if add_whole else det_scores
        sources = [source] * n_det + (["whole_image"] if add_whole else [])
        out = Recognition(width=w, height=h)
        if len(all_boxes) == 0:
            out.timings = {"detect_ms": 1e3 * (t1 - t0), "embed_ms": 0.0, "search_ms": 0.0,
                           "total_ms": 1e3 * (t1 - t0)}
            return out
        emb = self.embedder.embed([crop_box(image, b) for b in all_boxes])
        t2 = time.perf_counter()
        top, scores, accepted, runner_up, min_margin = self._search(emb)
        t3 = time.perf_counter()

        def margin_of(i: int) -> float | None:
            if runner_up[i] is None:
                return None
            return float(np.float32(scores[i]) - np.float32(runner_up[i][1]))  # float32, as choose_margin

        def record(i: int) -> dict[str, Any]:
            row = top[i]
            margin = margin_of(i)
            return {"box": _box_list(all_boxes[i]), "sku": row["sku"], "name": row["name"],
                    "category": row["category"], "price": row["price"], "score": float(scores[i]),
                    "margin": margin, "det_score": float(all_det[i]),
                    "source": sources[i]}

        def uncertain(i: int) -> bool:
            margin = margin_of(i)
            return min_margin is not None and margin is not None and margin < min_margin

        def uncertain_record(i: int) -> dict[str, Any]:
            row, score = runner_up[i]
            guess = None if row is None else {"sku": row["sku"], "name": row["name"], "price": row["price"],
                                              "score": score}
            return {**record(i), "runner_up": guess}

        rec = [i for i in range(n_det) if accepted[i]]
        kept: list[int] = []
        if rec:
            b = torch.from_numpy(all_boxes[rec])
            s = torch.from_numpy(scores[rec].astype(np.float32))
            codes = {sku: c for c, sku in enumerate(sorted({top[i]["sku"] for i in rec}))}
            idx = torch.tensor([codes[top[i]["sku"]] for i in rec])
            keep = batched_nms(b, s, idx, self.nms_iou)  # sorted by decreasing score
            keep = keep[nms(b[keep], s[keep], self.cross_sku_iou)]
            kept = [rec[int(k)] for k in keep]
        if not kept and add_whole and accepted[-1]:
            kept = [len(all_boxes) - 1]
        out.items = [record(i) for i in kept if not uncertain(i)]
        out.uncertain = [uncertain_record(i) for i in kept if uncertain(i)]

        unknown = [i for i in range(n_det) if not accepted[i]]
        if unknown and kept:
            iou = box_iou(torch.from_numpy(all_boxes[unknown]), torch.from_numpy(all_boxes[kept]))
            unknown = [u for u, m in zip(unknown, iou.max(dim=1).values.tolist()) if m < self.nms_iou]
        if unknown:
            keep = nms(torch.from_numpy(all_boxes[unknown]), torch.from_numpy(all_det[unknown]), self.nms_iou)
            unknown = [unknown[int(k)] for k in keep]
        for i in unknown:
            row = top[i]
            guess = None if row is None else {"sku": row["sku"], "name": row["name"], "price": row["price"],
                                              "score": float(scores[i])}
            out.unknown.append({"box": _box_list(all_boxes[i]),
                                "score": float(scores[i]) if np.isfinite(scores[i]) else None,
                                "det_score": float(all_det[i]), "best_guess": guess})
        t4 = time.perf_counter()
        out.timings = {"detect_ms": 1e3 * (t1 - t0), "embed_ms": 1e3 * (t2 - t1), "search_ms": 1e3 * (t3 - t2),
                       "total_ms": 1e3 * (t4 - t0)}
        return out
