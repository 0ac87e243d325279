"""The export check of a detector (src.inference.export): a swap of boxes whose scores tie is not an error, a
moved box or a changed label is."""

import math

import torch

from src.inference.export import _box_diff_within_ties


def _dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


REF = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.5, 0.5], [1, 1, 1])


def test_tied_boxes_in_the_other_order_match():
    swapped = _dets([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [0.9, 0.5, 0.5], [1, 1, 1])
    assert _box_diff_within_ties(swapped, REF) == 0.0


def test_a_moved_box_or_another_label_is_reported():
    moved = _dets([[0, 0, 10, 13], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.5, 0.5], [1, 1, 1])
    assert _box_diff_within_ties(moved, REF) == 3.0
    relabelled = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.5, 0.5], [2, 1, 1])
    assert math.isinf(_box_diff_within_ties(relabelled, REF))
    untied = _dets([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [0.9, 0.6, 0.5], [1, 1, 1])
    assert math.isinf(_box_diff_within_ties(untied, REF))  # a score that ties with nothing eager returned
    assert _box_diff_within_ties(_dets([[0, 0, 1, 1]], [0.9], [1]), REF) is None  # counts differ
