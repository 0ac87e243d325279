"""Writing and scoring a live-stream result.json (src/retrieval/live_scoring.py)."""

import json

import pytest

import src.utils.io as atomic_io
from src.retrieval.live_scoring import score_live_matching, write_result_json


def test_write_result_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out" / "result.json"
    first = {"v": {"item_id": "A", "frame_index": 0, "result": []}}
    write_result_json(path, first)
    assert json.loads(path.read_text()) == first

    def broken_replace(*args, **kwargs):  # fails after the temp file is written
        raise OSError("disk full")

    monkeypatch.setattr(atomic_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_result_json(path, {"other": {}})
    assert json.loads(path.read_text()) == first
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp file left


def test_score_live_matching_hand_case():
    box = [0, 0, 10, 10]
    gt = {
        "v1": {"item_id": "A", "frame_index": 3, "result": [{"img_name": "a1", "item_box": box, "frame_box": box}]},
        "v2": {"item_id": "B", "frame_index": 1, "result": [{"img_name": "b0", "item_box": box, "frame_box": box}]},
        "v3": {"item_id": "C", "frame_index": 0, "result": [{"img_name": "c0", "item_box": box, "frame_box": box}]},
        "v4": {"item_id": None},  # a video showing no gallery item
    }
    pred = {
        # right item, IoUs 0.82 and 1.0 -> full hit
        "v1": {"item_id": "A", "frame_index": 3,
               "result": [{"img_name": "a1", "item_box": [1, 0, 11, 10], "frame_box": box}]},
        # right item, frame box IoU 1/3 -> match hit only
        "v2": {"item_id": "B", "frame_index": 1,
               "result": [{"img_name": "b0", "item_box": box, "frame_box": [5, 0, 15, 10]}]},
        "v3": {"item_id": "X", "frame_index": 0, "result": gt["v3"]["result"]},  # wrong item
        "v4": {"item_id": "D", "frame_index": 0, "result": []},  # false positive
    }
    s = score_live_matching(pred, gt)
    assert s["match_precision"] == pytest.approx(2 / 4) and s["match_recall"] == pytest.approx(2 / 3)
    assert s["match_f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert s["box_accuracy"] == pytest.approx(1 / 2)
    assert s["full_precision"] == pytest.approx(1 / 4) and s["full_recall"] == pytest.approx(1 / 3)
    assert s["full_f1"] == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))
    # A looser IoU threshold turns v2 into a full hit; a wrong frame index never is one.
    assert score_live_matching(pred, gt, iou_threshold=0.3)["box_accuracy"] == 1.0
    wrong_frame = {"v1": {**pred["v1"], "frame_index": 4}}
    assert score_live_matching(wrong_frame, gt)["box_accuracy"] == 0.0
    assert score_live_matching({}, gt)["match_f1"] == 0.0
