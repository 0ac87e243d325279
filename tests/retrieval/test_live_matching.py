"""Each matching rule gets a hand-made case in which it decides the outcome.

Embeddings are unit vectors at an angle on the circle: the distance between angles a and b is
2 sin(|a - b| / 2) (10 deg -> 0.174, 40 deg -> 0.684, 68 deg -> 1.118, 90 deg -> 1.414).
"""

import json
import math

import numpy as np
import pytest

import src.retrieval.live_matching as lm
from src.retrieval.live_matching import (
    FrameBox,
    ImageBox,
    box_iou,
    match_video,
    match_videos,
    score_live_matching,
    write_result_json,
)


def e(deg: float) -> np.ndarray:
    return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


def img(name, deg, det=0.5, box=(0, 0, 10, 10)):
    return ImageBox(img_name=name, box=box, det_score=det, embedding=e(deg))


def frame(video, index, deg, det=0.5, box=(0, 0, 5, 5)):
    return FrameBox(video_id=video, frame_index=index, box=box, det_score=det, embedding=e(deg))


def matched_item(images, frames, **kwargs):
    result = match_videos(images, frames, **kwargs)
    return result["v"]["item_id"] if "v" in result else None


def test_keep_ratio_cuts_far_pairs():
    # 4 pairs, keep ceil(0.28 * 4) = 2: A (10 deg) and one B (40 deg). Counts tie 1:1, nearest wins -> A.
    # Keeping all pairs, B's three boxes outvote A -> B.
    images = {"A": [img("a0", 10)], "B": [img("b0", 40), img("b1", 41), img("b2", 42)]}
    frames = [frame("v", 0, 0)]
    assert matched_item(images, frames) == "A"
    assert matched_item(images, frames, keep_ratio=1.0) == "B"


def test_top_half_by_count_removes_a_rare_item():
    # 14 pairs, keep ceil(0.28 * 14) = 4: A x1 (nearest, 1 deg), B x3. Top half of 2 items -> B only.
    images = {"A": [img("a", 1)], "B": [img("b0", 5), img("b1", 6), img("b2", 7)]}
    images["C"] = [img(f"c{i}", 170) for i in range(10)]
    frames = [frame("v", 0, 0)]
    assert matched_item(images, frames) == "B"
    assert matched_item(images, frames, top_fraction=1.0) == "A"  # without the rule the nearest pair wins


def test_nearest_item_among_several_candidates():
    frames = [frame("v", 0, 0)]
    assert matched_item({"A": [img("a0", 5), img("a1", 6)], "B": [img("b0", 3), img("b1", 8)]}, frames,
                        keep_ratio=1.0) == "B"
    assert matched_item({"A": [img("a0", 3), img("a1", 8)], "B": [img("b0", 5), img("b1", 6)]}, frames,
                        keep_ratio=1.0) == "A"


def test_no_match_when_every_pair_is_beyond_max_distance():
    images = {"A": [img("a0", 100), img("a1", 110)]}  # distances 1.53, 1.64
    frames = [frame("v", 0, 0)]
    assert match_videos(images, frames) == {}
    assert matched_item(images, frames, max_distance=1.6) == "A"
    # 67.9 deg -> d = 1.1169 <= 1.12 is kept; 68.3 deg -> 1.1227 is not.
    assert matched_item({"A": [img("a", 67.9)]}, frames) == "A"
    assert matched_item({"A": [img("a", 68.3)]}, frames) is None


def test_item_claimed_by_two_videos_keeps_the_nearest_video():
    images = {"A": [img("a0", 2)], "Z": [img("z0", 120)]}
    frames = [frame("v1", 0, 0), frame("v2", 4, 10)]
    assert match_video(images, [frames[1]]).item_id == "A"  # alone, v2 would take A
    result = match_videos(images, frames)
    assert list(result) == ["v1"] and result["v1"]["item_id"] == "A"


def test_highest_detection_score_picks_the_image_box_and_the_frame_box():
    images = {
        "A": [
            img("a0", 1, det=0.6, box=(1, 1, 11, 11)),  # kept, lower score
            img("a1", 2.5, det=0.9, box=(2, 2, 12, 12)),  # nearest pair (frame 3) and highest kept score
            img("a2", 180, det=0.95, box=(3, 3, 13, 13)),  # higher score, but d = 1.93 > 1.12: dropped
        ]
    }
    frames = [
        frame("v", 3, 0, det=0.8, box=(5, 5, 9, 9)),  # best-scoring box of the matched frame
        frame("v", 3, 3, det=0.5, box=(0, 0, 4, 4)),  # the box a1 matched, lower score
        frame("v", 7, 30, det=0.99, box=(6, 6, 9, 9)),  # best score overall, but another frame
    ]
    result = match_videos(images, frames, keep_ratio=1.0)
    assert result == {
        "v": {"item_id": "A", "frame_index": 3, "result": [{"img_name": "a1", "item_box": [2, 2, 12, 12],
                                                             "frame_box": [5, 5, 9, 9]}]}
    }


def test_videos_are_matched_independently_and_errors():
    images = {"A": [img("a", 0)], "B": [img("b", 45)]}
    result = match_videos(images, [frame("v1", 0, 1), frame("v2", 0, 44), frame("v2", 1, 46)])
    assert {v: r["item_id"] for v, r in result.items()} == {"v1": "A", "v2": "B"}
    with pytest.raises(ValueError, match="keep_ratio"):
        match_videos(images, [], keep_ratio=0.0)
    with pytest.raises(ValueError, match="image boxes have dim 2, video v boxes have dim 3"):
        match_videos(images, [FrameBox("v", 0, (0, 0, 1, 1), 0.5, np.ones(3) / math.sqrt(3))])
    with pytest.raises(ValueError, match="no image boxes"):
        match_videos({"A": []}, [frame("v", 0, 0)])


def test_write_result_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out" / "result.json"
    first = {"v": {"item_id": "A", "frame_index": 0, "result": []}}
    write_result_json(path, first)
    assert json.loads(path.read_text()) == first

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lm.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_result_json(path, {"other": {}})
    assert json.loads(path.read_text()) == first
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp file left


def test_box_iou_hand_cases():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (1, 0, 11, 10)) == pytest.approx(90 / 110)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


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


def test_end_to_end_result_file_scores_perfectly_against_itself(tmp_path):
    images = {"A": [img("a", 0)], "B": [img("b", 45)]}
    result = match_videos(images, [frame("v1", 0, 1), frame("v2", 2, 44)])
    write_result_json(tmp_path / "result.json", result)
    loaded = json.loads((tmp_path / "result.json").read_text())
    assert score_live_matching(loaded, result) == {
        "match_precision": 1.0, "match_recall": 1.0, "match_f1": 1.0, "box_accuracy": 1.0,
        "full_precision": 1.0, "full_recall": 1.0, "full_f1": 1.0,
    }
