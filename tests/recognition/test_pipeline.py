"""The recognition pipeline on generated counter photos with an oracle detector (ground-truth boxes) and an
identity-like embedder: right SKUs, open-set rejection, NMS, the whole-image candidate."""

from __future__ import annotations

import numpy as np
import pytest

from src.inference.detector import Detections
from src.recognition.gallery import Gallery
from src.recognition.pipeline import RecognitionPipeline
from tests.recognition.conftest import FAMILY_HEADS
from tests.recognition.helpers import counter_photo, studio_shot


class FixedDetector:
    def __init__(self, boxes, scores=None):
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.scores = np.ones(len(self.boxes), np.float32) if scores is None else np.asarray(scores, np.float32)

    def detect(self, image):
        return Detections(self.boxes, self.scores, np.ones(len(self.boxes), np.int64))


def _skus(items):
    return sorted(i["sku"] for i in items)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_boxes_give_the_right_skus(studio_gallery, embedder, seed):
    rng = np.random.default_rng(seed)
    products = [FAMILY_HEADS[i] for i in rng.choice(len(FAMILY_HEADS), 4, replace=False)]
    img, boxes, sku_ids = counter_photo(products, seed)
    pipe = RecognitionPipeline(embedder, studio_gallery.index, FixedDetector(boxes))
    rec = pipe.recognize(img)
    assert _skus(rec.items) == sorted(str(s) for s in sku_ids)
    assert rec.unknown == []
    by_sku = {i["sku"]: i for i in rec.items}
    for box, sku in zip(boxes, sku_ids):  # each product at its own box, with the catalogue's metadata
        item = by_sku[str(sku)]
        np.testing.assert_allclose(item["box"], box, atol=0.1)
        assert item["score"] > 0.99 and item["source"] == "detector"
        assert item["price"] == FAMILY_HEADS[[p.sku_id for p in FAMILY_HEADS].index(sku)].price
    assert set(rec.timings) == {"detect_ms", "embed_ms", "search_ms", "total_ms"}


def test_given_boxes_replace_the_detector(studio_gallery, embedder):
    img, boxes, sku_ids = counter_photo(FAMILY_HEADS[:3], 5)
    pipe = RecognitionPipeline(embedder, studio_gallery.index, FixedDetector(np.zeros((0, 4))), whole_image="never")
    assert pipe.recognize(img).items == []
    rec = pipe.recognize(img, boxes=boxes)
    assert _skus(rec.items) == sorted(str(s) for s in sku_ids) and {i["source"] for i in rec.items} == {"given"}


def test_product_missing_from_gallery_is_unknown_with_best_guess(embedder):
    products = FAMILY_HEADS[:4]
    from tests.recognition.helpers import studio_entry

    gallery = Gallery.create(embedder, threshold=0.95)
    gallery.add([studio_entry(s) for s in products[:3]])  # the 4th product is not sold here
    img, boxes, sku_ids = counter_photo(products, 3)
    rec = RecognitionPipeline(embedder, gallery.index, FixedDetector(boxes)).recognize(img)
    assert _skus(rec.items) == sorted(str(s) for s in sku_ids[:3])
    (unknown,) = rec.unknown
    np.testing.assert_allclose(unknown["box"], boxes[3], atol=0.1)
    assert unknown["score"] < 0.95 and unknown["best_guess"]["sku"] in {str(s) for s in sku_ids[:3]}


def test_high_threshold_lists_everything_as_unknown(studio_gallery, embedder):
    img, boxes, _ = counter_photo(FAMILY_HEADS[2:6], 4)
    studio_gallery.index.set_threshold(0.99999)
    rec = RecognitionPipeline(embedder, studio_gallery.index, FixedDetector(boxes)).recognize(img)
    assert rec.items == [] and len(rec.unknown) == 4
    assert all(u["best_guess"] is not None and u["score"] < 0.99999 for u in rec.unknown)


def test_duplicate_detections_count_once(studio_gallery, embedder):
    img, boxes, sku_ids = counter_photo(FAMILY_HEADS[:2], 7)
    dup = np.concatenate([boxes, boxes[:1] + np.array([1, 1, 1, 1], np.float32)])  # a second box on product 0
    rec = RecognitionPipeline(embedder, studio_gallery.index, FixedDetector(dup, [0.9, 0.9, 0.8])).recognize(img)
    assert _skus(rec.items) == sorted(str(s) for s in sku_ids)
    # Same box twice but not recognised: one unknown entry, not two.
    studio_gallery.index.set_threshold(0.99999)
    rec = RecognitionPipeline(embedder, studio_gallery.index, FixedDetector(dup, [0.9, 0.9, 0.8])).recognize(img)
    assert len(rec.unknown) == 2


def test_whole_image_recognises_a_close_up_without_detector(studio_gallery, embedder):
    shot = studio_shot(FAMILY_HEADS[5])
    rec = RecognitionPipeline(embedder, studio_gallery.index).recognize(shot)
    (item,) = rec.items
    assert item["sku"] == str(FAMILY_HEADS[5].sku_id) and item["source"] == "whole_image"
    assert item["box"] == [0, 0, shot.shape[1], shot.shape[0]]


def test_whole_image_is_dropped_when_detections_are_recognised(studio_gallery, embedder):
    img, boxes, _ = counter_photo(FAMILY_HEADS[:3], 8)
    studio_gallery.index.set_threshold(None)  # everything accepted, the blend of 3 products included
    rec = RecognitionPipeline(embedder, studio_gallery.index, FixedDetector(boxes)).recognize(img)
    assert len(rec.items) == 3 and "whole_image" not in {i["source"] for i in rec.items}
    assert all(u["box"] != [0, 0, 320, 240] for u in rec.unknown)


def test_empty_gallery_makes_every_detection_unknown(embedder):
    img, boxes, _ = counter_photo(FAMILY_HEADS[:2], 9)
    gallery = Gallery.create(embedder)
    rec = RecognitionPipeline(embedder, gallery.index, FixedDetector(boxes)).recognize(img)
    assert rec.items == [] and len(rec.unknown) == 2 and rec.unknown[0]["best_guess"] is None


def test_tiny_and_outside_boxes_are_ignored(studio_gallery, embedder):
    img, boxes, _ = counter_photo(FAMILY_HEADS[:1], 10)
    weird = np.array([[5, 5, 7, 7], [-50, -50, -10, -10], [400, 0, 500, 100]], np.float32)
    pipe = RecognitionPipeline(embedder, studio_gallery.index, FixedDetector(np.concatenate([boxes, weird])),
                               whole_image="never")
    rec = pipe.recognize(img)
    assert len(rec.items) == 1 and rec.unknown == []


def test_bad_arguments_are_clear(studio_gallery, embedder):
    with pytest.raises(ValueError, match="whole_image"):
        RecognitionPipeline(embedder, studio_gallery.index, whole_image="sometimes")
    with pytest.raises(ValueError, match="nothing to recognise"):
        pipe = RecognitionPipeline(embedder, studio_gallery.index, whole_image="never")
        pipe.recognize(studio_shot(FAMILY_HEADS[0]))
    with pytest.raises(ValueError, match="RGB uint8"):
        RecognitionPipeline(embedder, studio_gallery.index).recognize(np.zeros((5, 5), np.float32))
