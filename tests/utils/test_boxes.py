"""src/utils/boxes.py: the one box IoU (torchvision) against the hand-written formula it replaced."""

import doctest

import numpy as np
import pytest

import src.utils.boxes
from src.utils.boxes import box_iou


def _random_boxes(n: int, seed: int) -> list[tuple]:
    """Float and integer boxes; about a third have zero width and/or height (degenerate)."""
    rng = np.random.default_rng(seed)
    boxes = []
    for i in range(n):
        x1, y1 = rng.uniform(0, 20, size=2)
        w, h = rng.uniform(0, 12, size=2)
        if rng.random() < 0.2:
            w = 0.0
        if rng.random() < 0.2:
            h = 0.0
        box = (x1, y1, x1 + w, y1 + h)
        boxes.append(tuple(int(round(v)) for v in box) if i % 2 else tuple(float(v) for v in box))
    return boxes


def hand_written(a, b) -> float:
    """The formula written out three times before (src/data/retail_world/scenes.py, src/recognition/live.py,
    src/retrieval/live_matching.py; the previous commit compared all three with box_iou), kept as the oracle."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_box_iou_equals_the_hand_written_ones():
    boxes = _random_boxes(120, seed=0)
    pairs = [(a, b) for a in boxes for b in boxes[:40]]
    assert sum(hand_written(a, b) > 0 for a, b in pairs) > 300  # the random boxes do overlap
    assert sum((a[2] - a[0]) * (a[3] - a[1]) == 0 for a in boxes) > 20  # and many are degenerate
    for a, b in pairs:
        assert box_iou(a, b) == hand_written(a, b), (a, b)


def test_box_iou_hand_cases():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (1, 0, 11, 10)) == pytest.approx(90 / 110)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((1, 1, 1, 5), (1, 1, 1, 5)) == 0.0  # two zero-area boxes: torchvision alone gives NaN


def test_docstring_examples():
    result = doctest.testmod(src.utils.boxes)
    assert result.attempted > 0 and result.failed == 0
