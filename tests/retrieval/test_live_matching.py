"""Each matching rule gets a hand-made case in which it decides the outcome.

Embeddings are unit vectors at an angle on the circle: the distance between angles a and b is
2 sin(|a - b| / 2) (10 deg -> 0.174, 40 deg -> 0.684, 68 deg -> 1.118, 90 deg -> 1.414).
"""

import json
import math

import numpy as np
import pytest

from src.retrieval.live_matching import (
    FrameBox,
    ImageBox,
    match_folder,
    match_video,
    match_videos,
)
from src.retrieval.live_scoring import score_live_matching, write_result_json


def e(deg: float) -> np.ndarray:
    return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


def img(name, deg, det=0.5, box=(0, 0, 10, 10)):
    return ImageBox(img_name=name, box=box, det_score=det, embedding=e(deg))


def frame(video, index, deg, det=0.5, box=(0, 0, 5, 5)):
    return FrameBox(video_id=video, frame_index=index, box=box, det_score=det, embedding=e(deg))


PER_VIDEO = {"strategy": "per_video"}  # the transposed variant; the tests below pinned to it describe it


def matched_item(images, frames, **kwargs):
    result = match_videos(images, frames, **kwargs)
    return result["v"]["item_id"] if "v" in result else None


# --- strategy="per_folder" (the default): the solution's rules, one case per rule -----------------------------


def items(result):
    return {v: r["item_id"] for v, r in result.items()}


def test_issue_case_1_folders_are_matched_not_videos():
    # A and B both find v1 nearest (2 and 3 deg away); v1 keeps the nearer folder, A. B is not re-matched.
    images = {"A": [img("a", 0)], "B": [img("b", 5)]}
    frames = [frame("v1", 0, 2), frame("v2", 0, 30)]
    assert items(match_videos(images, frames)) == {"v1": "A"}
    assert items(match_videos(images, frames, **PER_VIDEO)) == {"v1": "A", "v2": "B"}  # what it did before


def test_issue_case_2_the_folders_most_confident_box_names_the_image():
    images = {"A": [img("0.jpg", 40, det=0.99, box=(0, 0, 9, 9)), img("1.jpg", 10, det=0.91, box=(1, 1, 8, 8))]}
    result = match_videos(images, [frame("v", 0, 0)])
    assert result["v"]["result"][0]["img_name"] == "0.jpg" and result["v"]["result"][0]["item_box"] == [0, 0, 9, 9]
    assert match_videos(images, [frame("v", 0, 0)], **PER_VIDEO)["v"]["result"][0]["img_name"] == "1.jpg"


def _far_pairs_folder():
    # v1 at 0 deg, v2 at 180 deg. N = 8 boxes, keep ceil(0.28 * 8) = 3: v1 at d 1.0 (60 deg), v2 twice at
    # d 1.133 (111 deg); the five 90-deg boxes (d 1.414 to both) are not kept.
    boxes = [img("a0", 60), img("a1", 111), img("a2", 111)] + [img(f"f{i}", 90) for i in range(5)]
    return {"A": boxes}, [frame("v1", 0, 0), frame("v2", 0, 180)]


def test_issue_case_3_max_distance_is_applied_last():
    images, frames = _far_pairs_folder()
    # Counting first: v2 (2 votes) beats v1 (1); its pair at 1.133 > 1.12 is then dropped -> no match.
    # Cutting before counting would leave v1 alone and answer {v1: A}.
    assert match_folder("A", images["A"], frames).video_id == "v2"
    assert match_folder("A", images["A"], frames).distance == pytest.approx(2 * math.sin(math.radians(34.5)))
    assert match_videos(images, frames) == {}
    assert items(match_videos(images, frames, max_distance=1.2)) == {"v2": "A"}
    assert items(match_videos(images, frames, **PER_VIDEO)) == {"v1": "A"}


def test_rule_a_nearest_box_across_all_videos_and_frames():
    frames = [frame("v1", 0, 20), frame("v2", 3, 30), frame("v2", 7, 4)]
    result = match_videos({"A": [img("a", 0)]}, frames)
    assert items(result) == {"v2": "A"} and result["v2"]["frame_index"] == 7
    # Equal distances: the smaller video id, then the smaller frame index, whatever the input order.
    tied = [frame("v2", 0, 10), frame("v1", 9, 10), frame("v1", 2, 10)]
    result = match_videos({"A": [img("a", 0)]}, tied)
    assert items(result) == {"v1": "A"} and result["v1"]["frame_index"] == 2


def test_rule_b_keep_ratio_decides():
    # N = 4, keep ceil(0.28 * 4) = 2: v1 (d 0.017) and the nearest v2 pair (d 0.48). One vote each: both are in
    # the top half (a tie at the boundary keeps both), and v1 is nearer. Keeping all 4, v2 wins 3 votes to 1.
    images = {"A": [img("a0", 1), img("a1", 150), img("a2", 151), img("a3", 152)]}
    frames = [frame("v1", 0, 0), frame("v2", 0, 180)]
    assert items(match_videos(images, frames)) == {"v1": "A"}
    assert items(match_videos(images, frames, keep_ratio=1.0)) == {"v2": "A"}


def test_rule_c_top_half_by_count_decides():
    # N = 14, keep ceil(0.28 * 14) = 4: v1 once (the nearest pair, 1 deg), v2 three times. Top half of 2 -> v2.
    boxes = [img("a0", 1), img("a1", 176), img("a2", 175), img("a3", 174)] + [img(f"f{i}", 90) for i in range(10)]
    frames = [frame("v1", 0, 0), frame("v2", 0, 180)]
    assert items(match_videos({"A": boxes}, frames)) == {"v2": "A"}
    assert items(match_videos({"A": boxes}, frames, top_fraction=1.0)) == {"v1": "A"}  # nearest pair wins


def test_an_unrelated_folder_does_not_change_another_folders_answer():
    # The old test_top_half_by_count_removes_a_rare_item: adding folder C (10 boxes at 170 deg) flipped v from A
    # to B per video. Per folder, each folder votes on its own boxes; v keeps the nearest folder, A.
    images = {"A": [img("a", 1)], "B": [img("b0", 5), img("b1", 6), img("b2", 7)]}
    with_c = {**images, "C": [img(f"c{i}", 170) for i in range(10)]}
    frames = [frame("v", 0, 0)]
    assert items(match_videos(images, frames)) == items(match_videos(with_c, frames)) == {"v": "A"}
    assert items(match_videos(images, frames, **PER_VIDEO)) == {"v": "A"}
    assert items(match_videos(with_c, frames, **PER_VIDEO)) == {"v": "B"}


def test_rule_d_several_videos_left_the_nearest_wins():
    frames = [frame("v1", 0, 0), frame("v2", 0, 180)]
    two_each = [img("a0", 5), img("a1", 12), img("a2", 177), img("a3", 160)]  # v2 owns the nearest pair
    assert items(match_videos({"A": two_each}, frames, keep_ratio=1.0)) == {"v2": "A"}
    two_each = [img("a0", 1), img("a1", 12), img("a2", 170), img("a3", 160)]  # now v1 does
    assert items(match_videos({"A": two_each}, frames, keep_ratio=1.0)) == {"v1": "A"}
    # Equal distances between the two left: the smaller video id.
    assert items(match_videos({"A": [img("a0", 90), img("a1", 90)]}, frames, keep_ratio=1.0,
                              max_distance=2.0)) == {"v1": "A"}


def test_rule_e_image_box_is_the_folders_most_confident_even_if_unmatched():
    # a0 decides (N = 3, keep 1: its pair with v1); a1's pair went to v2 and was cut, yet a1 names the image.
    images = {"A": [img("a0", 2, det=0.92), img("a1", 178, det=0.99, box=(4, 4, 8, 8)), img("a2", 3, det=0.95),
                    img("a3", 4, det=0.99, box=(5, 5, 9, 9))]}  # equal to a1's score, later: not chosen
    result = match_videos(images, [frame("v1", 0, 0), frame("v2", 0, 180)])
    assert items(result) == {"v1": "A"}
    assert result["v1"]["result"][0]["img_name"] == "a1" and result["v1"]["result"][0]["item_box"] == [4, 4, 8, 8]


def test_rule_f_frame_of_the_nearest_kept_pair_and_its_most_confident_box():
    images = {"A": [img("a0", 2.5, det=0.9), img("a1", 28, det=0.5)]}
    frames = [
        frame("v", 3, 3, det=0.5, box=(0, 0, 4, 4)),  # a0's nearest box (d 0.009): frame 3
        frame("v", 3, 40, det=0.8, box=(5, 5, 9, 9)),  # frame 3's most confident box
        frame("v", 3, 50, det=0.8, box=(1, 1, 9, 9)),  # as confident, later: not chosen
        frame("v", 7, 30, det=0.99, box=(6, 6, 9, 9)),  # a1's nearest (d 0.035), the best score overall
    ]
    result = match_videos(images, frames, keep_ratio=1.0)
    assert result == {"v": {"item_id": "A", "frame_index": 3,
                            "result": [{"img_name": "a0", "item_box": [0, 0, 10, 10], "frame_box": [5, 5, 9, 9]}]}}


def test_post_rule_video_claimed_twice_keeps_the_nearest_folder():
    frames = [frame("v1", 0, 0), frame("v2", 0, 90)]
    assert items(match_videos({"A": [img("a", 10)], "B": [img("b", 5)]}, frames)) == {"v1": "B"}
    # Equal distances: the smaller item id, whatever the dict order.
    assert items(match_videos({"B": [img("b", 5)], "A": [img("a", 5)]}, frames)) == {"v1": "A"}


def test_post_rule_max_distance_boundary():
    frames = [frame("v", 0, 0)]
    # 67.9 deg -> d = 1.1169 <= 1.12 is kept; 68.3 deg -> 1.1227 is not.
    assert items(match_videos({"A": [img("a", 67.9)]}, frames)) == {"v": "A"}
    assert match_videos({"A": [img("a", 68.3)]}, frames) == {}


def test_ids_are_strings_and_bad_input_errors():
    # A video id given as 1 and as "1" is one video (it used to raise).
    frames = [FrameBox(1, 0, (0, 0, 5, 5), 0.5, e(40)), FrameBox("1", 2, (0, 0, 5, 5), 0.5, e(1))]
    for strategy in ("per_folder", "per_video"):
        result = match_videos({7: [img("a", 0)]}, frames, strategy=strategy)
        assert result == {"1": {"item_id": "7", "frame_index": 2, "result": [
            {"img_name": "a", "item_box": [0, 0, 10, 10], "frame_box": [0, 0, 5, 5]}]}}
    with pytest.raises(ValueError, match="item id '1' appears twice"):
        match_videos({1: [img("a", 0)], "1": [img("b", 0)]}, frames)
    with pytest.raises(ValueError, match="strategy must be one of"):
        match_videos({"A": [img("a", 0)]}, frames, strategy="per_item")
    with pytest.raises(ValueError, match="image boxes have dim 2, video boxes have dim 3"):
        match_videos({"A": [img("a", 0)]}, [FrameBox("v", 0, (0, 0, 1, 1), 0.5, np.ones(3))])
    with pytest.raises(ValueError, match="NaN or inf"):
        match_videos({"A": [ImageBox("a", (0, 0, 1, 1), 0.5, np.array([np.nan, 1.0]))]}, frames)
    with pytest.raises(ValueError, match="zero vector"):
        match_videos({"A": [img("a", 0)]}, [FrameBox("v", 0, (0, 0, 1, 1), 0.5, np.zeros(2))])
    with pytest.raises(ValueError, match="no image boxes"):
        match_videos({"A": []}, frames)
    assert match_videos({"A": [img("a", 0)], "B": []}, []) == {}  # no video box: nothing to match
    # Embeddings need not arrive normalised: the distance is that of the unit vectors.
    assert items(match_videos({"A": [ImageBox("a", (0, 0, 1, 1), 0.5, 5 * e(67.9))]}, [frame("v", 0, 0)])) == {
        "v": "A"}


# --- a differential test against a brute-force reading of the rules -------------------------------------------


def rules_reference(images, frames, keep_ratio=0.28, top_fraction=0.5, max_distance=1.12):
    """The per-folder rules written out plainly with Python loops and math.dist (no numpy): the oracle."""

    def unit(v):
        v = [float(x) for x in v]
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def ceil1(x):
        return max(1, math.ceil(x - 1e-9))

    vboxes = [(str(f.video_id), int(f.frame_index), pos, f, unit(f.embedding)) for pos, f in enumerate(frames)]
    claims = []
    for item_id, boxes in images.items():
        if not boxes or not vboxes:
            continue
        pairs = []  # (d, box position, video box)
        for j, b in enumerate(boxes):
            u = unit(b.embedding)
            best = min(vboxes, key=lambda t: (math.dist(u, t[4]), t[0], t[1], t[2]))  # (a)
            pairs.append((math.dist(u, best[4]), j, best))
        kept = sorted(pairs, key=lambda p: (p[0], p[1]))[:ceil1(keep_ratio * len(pairs))]  # (b)
        votes = {}
        for p in kept:
            votes[p[2][0]] = votes.get(p[2][0], 0) + 1
        ranked = sorted(votes.values(), reverse=True)
        top = {v for v, c in votes.items() if c >= ranked[ceil1(top_fraction * len(ranked)) - 1]}  # (c)
        d, _, vb = min((p for p in kept if p[2][0] in top), key=lambda p: (p[0], p[2][0], p[1]))  # (d)
        video_id, frame_index = vb[0], vb[1]
        in_frame = [t[3] for t in vboxes if t[0] == video_id and t[1] == frame_index]
        frame_box = max(in_frame, key=lambda f: f.det_score)  # (f), first of equal scores
        img_box = max(boxes, key=lambda b: b.det_score)  # (e)
        claims.append((d, str(item_id), video_id, frame_index, img_box, frame_box))
    result = {}
    for video_id in sorted({c[2] for c in claims}):
        d, item_id, _, frame_index, img_box, frame_box = min(c for c in claims if c[2] == video_id)[:6]
        if d <= max_distance:
            result[video_id] = {"item_id": item_id, "frame_index": frame_index, "result": [
                {"img_name": img_box.img_name, "item_box": list(img_box.box), "frame_box": list(frame_box.box)}]}
    return result


def random_case(rng, ties: bool):
    dim = int(rng.integers(2, 5))
    pool = [v / np.linalg.norm(v) for v in rng.normal(size=(4, dim))]

    def emb():  # ties: a few shared vectors, so equal distances happen; else continuous (ties-free)
        return pool[int(rng.integers(len(pool)))] if ties else rng.normal(size=dim)

    def det():
        return float(rng.choice([0.9, 0.95, 0.99])) if ties else float(rng.uniform(0.9, 1.0))

    boxes = iter(range(10_000))
    images = {}
    for f in range(int(rng.integers(1, 5))):
        images[f"i{f}"] = [ImageBox(f"{f}_{k}.jpg", (next(boxes), 0, 100, 100), det(), emb())
                           for k in range(int(rng.integers(0, 7)))]
    frames = [FrameBox(f"v{v}", int(fi), (next(boxes), 0, 50, 50), det(), emb())
              for v in range(int(rng.integers(1, 5))) for fi in rng.choice(20, int(rng.integers(1, 4)), replace=False)
              for _ in range(int(rng.integers(1, 4)))]
    rng.shuffle(frames)  # the input order must not matter beyond the documented tie-breaks
    if not any(images.values()):
        images["i0"].append(ImageBox("x.jpg", (next(boxes), 0, 1, 1), det(), emb()))
    params = {"keep_ratio": float(rng.choice([0.28, 0.5, 1.0])), "top_fraction": float(rng.choice([0.5, 1.0])),
              "max_distance": float(rng.choice([0.8, 1.12, 2.0]))}
    return images, frames, params


@pytest.mark.parametrize("ties", [False, True])
def test_per_folder_equals_a_brute_force_reading_of_the_rules(ties):
    rng = np.random.default_rng(13 + ties)
    matched = 0
    for _ in range(300):
        images, frames, params = random_case(rng, ties)
        expected = rules_reference(images, frames, **params)
        assert match_videos(images, frames, **params) == expected, (images, frames, params)
        matched += len(expected)
    assert matched > 300  # the cases do match things


# --- strategy="per_video": the transposed variant, kept as a named option ---------------------------------------


def test_per_video_keep_ratio_cuts_far_pairs():
    # 4 pairs, keep ceil(0.28 * 4) = 2: A (10 deg) and one B (40 deg). Counts tie 1:1, nearest wins -> A.
    # Keeping all pairs, B's three boxes outvote A -> B.
    images = {"A": [img("a0", 10)], "B": [img("b0", 40), img("b1", 41), img("b2", 42)]}
    frames = [frame("v", 0, 0)]
    assert matched_item(images, frames, **PER_VIDEO) == "A"
    assert matched_item(images, frames, **PER_VIDEO, keep_ratio=1.0) == "B"


def test_per_video_nearest_item_among_several_candidates():
    frames = [frame("v", 0, 0)]
    assert matched_item({"A": [img("a0", 5), img("a1", 6)], "B": [img("b0", 3), img("b1", 8)]}, frames, **PER_VIDEO,
                        keep_ratio=1.0) == "B"
    assert matched_item({"A": [img("a0", 3), img("a1", 8)], "B": [img("b0", 5), img("b1", 6)]}, frames, **PER_VIDEO,
                        keep_ratio=1.0) == "A"


def test_per_video_no_match_when_every_pair_is_beyond_max_distance():
    images = {"A": [img("a0", 100), img("a1", 110)]}  # distances 1.53, 1.64
    frames = [frame("v", 0, 0)]
    assert match_videos(images, frames, **PER_VIDEO) == {}
    assert matched_item(images, frames, **PER_VIDEO, max_distance=1.6) == "A"
    # 67.9 deg -> d = 1.1169 <= 1.12 is kept; 68.3 deg -> 1.1227 is not.
    assert matched_item({"A": [img("a", 67.9)]}, frames, **PER_VIDEO) == "A"
    assert matched_item({"A": [img("a", 68.3)]}, frames, **PER_VIDEO) is None


def test_per_video_item_claimed_by_two_videos_keeps_the_nearest_video():
    images = {"A": [img("a0", 2)], "Z": [img("z0", 120)]}
    frames = [frame("v1", 0, 0), frame("v2", 4, 10)]
    assert match_video(images, [frames[1]]).item_id == "A"  # alone, v2 would take A
    result = match_videos(images, frames, **PER_VIDEO)
    assert list(result) == ["v1"] and result["v1"]["item_id"] == "A"


def test_per_video_highest_detection_score_picks_the_image_box_and_the_frame_box():
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
    result = match_videos(images, frames, keep_ratio=1.0, **PER_VIDEO)
    assert result == {
        "v": {"item_id": "A", "frame_index": 3, "result": [{"img_name": "a1", "item_box": [2, 2, 12, 12],
                                                             "frame_box": [5, 5, 9, 9]}]}
    }


def test_per_video_videos_are_matched_independently_and_errors():
    images = {"A": [img("a", 0)], "B": [img("b", 45)]}
    result = match_videos(images, [frame("v1", 0, 1), frame("v2", 0, 44), frame("v2", 1, 46)], **PER_VIDEO)
    assert {v: r["item_id"] for v, r in result.items()} == {"v1": "A", "v2": "B"}
    with pytest.raises(ValueError, match="keep_ratio"):
        match_videos(images, [], keep_ratio=0.0)
    with pytest.raises(ValueError, match="image boxes have dim 2, video v boxes have dim 3"):
        match_videos(images, [FrameBox("v", 0, (0, 0, 1, 1), 0.5, np.ones(3) / math.sqrt(3))], **PER_VIDEO)
    with pytest.raises(ValueError, match="no image boxes"):
        match_videos({"A": []}, [frame("v", 0, 0)])


def test_end_to_end_result_file_scores_perfectly_against_itself(tmp_path):
    images = {"A": [img("a", 0)], "B": [img("b", 45)]}
    result = match_videos(images, [frame("v1", 0, 1), frame("v2", 2, 44)])
    write_result_json(tmp_path / "result.json", result)
    loaded = json.loads((tmp_path / "result.json").read_text())
    assert score_live_matching(loaded, result) == {
        "match_precision": 1.0, "match_recall": 1.0, "match_f1": 1.0, "box_accuracy": 1.0,
        "full_precision": 1.0, "full_recall": 1.0, "full_f1": 1.0,
    }
