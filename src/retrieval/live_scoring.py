"""Scoring a live-stream ``result.json`` (the layout of src/retrieval/live_matching.py) and writing it.

:func:`score_live_matching` counts, per predicted video, a *match hit* (the right item) and a *full hit* (also
the right frame and boxes overlapping the truth by IoU >= a threshold), and reports precision, recall and F1 of
both. :func:`write_result_json` writes a result atomically (src/utils/io.py).

Standard library, src/utils/io.py and src/utils/boxes.py only (torch is imported when a box IoU is first
computed, not with this module).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from src.utils.boxes import box_iou
from src.utils.io import atomic_write_text

__all__ = ["score_live_matching", "write_result_json"]


def write_result_json(path: str | os.PathLike, result: Mapping[str, Any]) -> None:
    """Write ``result`` as JSON atomically (temp file in the same folder, fsync, os.replace, fsync the folder)."""
    atomic_write_text(path, json.dumps(result, ensure_ascii=False, indent=1))


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
