"""No silent wrong line: a match that beats another SKU (its look-alike) by less than the gallery's margin is
listed as uncertain, never priced; the margin is calibrated on validation (known answer) and stored with the
gallery and the audit trail."""

from __future__ import annotations

import numpy as np
import pytest

from src.recognition.checkout import checkout
from src.recognition.calibration import choose_margin, match_margins
from src.recognition.gallery import CALIBRATION_SKU, Gallery, ProductImage
from src.recognition.pipeline import RecognitionPipeline
from src.retrieval.index import GalleryIndex

DIM = 32


def unit(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1
    return v


def mix(parts: dict[int, float]) -> np.ndarray:
    """A unit vector with these coordinates (the rest on an axis of its own, dimension 31)."""
    v = np.zeros(DIM, np.float32)
    for i, x in parts.items():
        v[i] = x
    v[DIM - 1] = np.sqrt(max(0.0, 1 - float((v ** 2).sum())))
    return v / np.linalg.norm(v)


class VectorEmbedder:
    """Embeds an "image" that is its own vector (gallery and validation entries) or a crop of a photo whose
    pixels hold a code: the crop's first pixel value picks the vector from ``table``."""

    fingerprint, dim = "vectors-test", DIM

    def __init__(self, table: dict[int, np.ndarray] | None = None) -> None:
        self.table = table or {}

    def embed(self, images) -> np.ndarray:
        out = [im.astype(np.float32) if im.dtype != np.uint8 else self.table[int(im[0, 0, 0])] for im in images]
        return np.stack(out).astype(np.float32) if out else np.zeros((0, DIM), np.float32)

    embed_gallery = embed


def product(sku: str, vector: np.ndarray, price: float, name: str | None = None) -> ProductImage:
    return ProductImage(sku, f"{sku}.jpg", name or f"P{sku}", "c", price, image=vector)


def photo(codes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A photo with one 20x20 box per code (pixels = the code), side by side."""
    img = np.zeros((40, 30 * len(codes), 3), np.uint8)
    boxes = []
    for j, c in enumerate(codes):
        img[10:30, 30 * j:30 * j + 20] = c
        boxes.append([30 * j, 10, 30 * j + 20, 30])
    return img, np.asarray(boxes, np.float32)


@pytest.fixture
def lookalikes():
    """Gallery: "A" and its look-alike "A2" (cosine 0.90 between them), "C" elsewhere. Threshold 0.8."""
    a, a2 = unit(0), mix({0: 0.9, 1: np.sqrt(1 - 0.81)})
    table = {
        1: mix({0: 0.900, 1: 0.24}),  # a crop that A2 wins by a hair: A2 0.915, A 0.900
        2: mix({2: 0.97}),  # a clear C
    }
    emb = VectorEmbedder(table)
    gallery = Gallery.create(emb, threshold=0.8)
    gallery.add([product("A", a, 2.0), product("A2", a2, 3.0), product("C", unit(2), 5.0)])
    return gallery, emb


def _scores(gallery, v):
    _, vectors = gallery.index.vectors()
    return vectors @ v


def test_a_lookalike_won_by_a_hair_is_uncertain_and_a_clear_match_is_priced(lookalikes):
    gallery, emb = lookalikes
    s_a, s_a2, s_c = _scores(gallery, emb.table[1])
    assert min(s_a, s_a2) >= 0.8 and 0 < abs(s_a - s_a2) < 0.05  # both above the threshold, 0.0x apart
    assert _scores(gallery, emb.table[2])[2] > 0.95
    img, boxes = photo([1, 2])
    pipe = RecognitionPipeline(emb, gallery.index, None, whole_image="never")
    winner, other = ("A", "A2") if s_a > s_a2 else ("A2", "A")

    # No margin stored (a gallery from before margins): both priced, the hair's-breadth one silently.
    receipt = checkout(pipe, img, boxes=boxes)
    assert sorted(line["sku"] for line in receipt["items"]) == [winner, "C"] and receipt["uncertain"] == []

    gallery.index.set_margin(0.05)
    rec = pipe.recognize(img, boxes=boxes)
    assert [i["sku"] for i in rec.items] == ["C"] and rec.items[0]["margin"] > 0.5
    (u,) = rec.uncertain
    assert u["sku"] == winner and u["runner_up"]["sku"] == other
    assert u["margin"] == pytest.approx(abs(s_a - s_a2), abs=1e-5)
    receipt = checkout(pipe, img, boxes=boxes)
    assert [(line["sku"], line["line_total"]) for line in receipt["items"]] == [("C", 5.0)]
    assert receipt["total"] == 5.0 and not receipt["complete"] and receipt["unknown"] == []
    (line,) = receipt["uncertain"]
    assert [c["sku"] for c in line["candidates"]] == [winner, other]  # the cashier picks one of the two
    assert [d["sku"] for d in receipt["detections"]] == ["C"]

    gallery.index.set_margin(abs(s_a - s_a2) - 1e-4)  # a margin just below this one: priced again
    assert sorted(line["sku"] for line in checkout(pipe, img, boxes=boxes)["items"]) == [winner, "C"]


def test_a_sku_with_several_images_is_not_its_own_runner_up():
    """The runner-up is the best *other SKU*: A's second image must not make A uncertain."""
    a = unit(0)
    emb = VectorEmbedder({1: mix({0: 0.95})})
    gallery = Gallery.create(emb, threshold=0.5)
    gallery.add([product("A", a, 1.0), ProductImage("A", "A-2.jpg", "PA", "c", 1.0, image=mix({0: 0.99, 3: 0.1})),
                 product("B", unit(1), 2.0)])
    gallery.index.set_margin(0.1)
    img, boxes = photo([1])
    rec = RecognitionPipeline(emb, gallery.index, None, whole_image="never", top_k=1).recognize(img, boxes)
    assert [i["sku"] for i in rec.items] == ["A"] and rec.uncertain == []
    assert rec.items[0]["margin"] == pytest.approx(float(_scores(gallery, emb.table[1]).max()), abs=1e-5)  # B: 0
    # Depth 2 holds only A's two images: the runner-up is taken to score as the second (a lower bound).
    pipe = RecognitionPipeline(emb, gallery.index, None, whole_image="never", top_k=1, runner_up_depth=2)
    (u,) = pipe.recognize(img, boxes).uncertain
    assert u["runner_up"] is None and u["margin"] < 0.1


def _constructed_validation():
    """Gallery: SKUs g0..g9 on axes 0..9. Queries with known best (0.70) and runner-up scores (the rest on a free
    axis): right matches with margins 0.30, 0.25, 0.20, 0.02; wrong ones (best SKU not the query's: its
    look-alike won) 0.01, 0.03, 0.05, 0.08; plus a wrong one below the threshold 0.6 and one of a SKU not in the
    gallery (both ignored)."""
    gallery_vectors = np.stack([unit(i) for i in range(10)])
    gallery_skus = [f"g{i}" for i in range(10)]
    queries, skus = [], []
    for best, margin, right in [(0.7, 0.30, True), (0.7, 0.25, True), (0.7, 0.20, True), (0.7, 0.02, True),
                                (0.7, 0.01, False), (0.7, 0.03, False), (0.7, 0.05, False), (0.7, 0.08, False),
                                (0.55, 0.4, False), (0.7, 0.5, True)]:
        k = len(queries) % 5
        v = np.zeros(DIM, np.float32)
        v[2 * k], v[2 * k + 1] = best, best - margin  # best SKU g(2k), runner-up g(2k+1)
        v[20 + len(queries)] = np.sqrt(1 - best ** 2 - (best - margin) ** 2)
        queries.append(v)
        skus.append(f"g{2 * k}" if right else f"g{2 * k + 1}")
    skus[-1] = "not-in-gallery"
    return gallery_vectors, gallery_skus, np.stack(queries), skus


def test_margin_calibration_known_answer(tmp_path):
    gv, gs, qv, qs = _constructed_validation()
    right, wrong = match_margins(gv, gs, qv, qs, threshold=0.6)
    np.testing.assert_allclose(sorted(right), [0.02, 0.20, 0.25, 0.30], atol=1e-6)
    np.testing.assert_allclose(sorted(wrong), [0.01, 0.03, 0.05, 0.08], atol=1e-6)

    emb = VectorEmbedder()
    gallery = Gallery.create(emb, tmp_path / "g", threshold=0.6)
    gallery.add([product(s, v, 1.0) for s, v in zip(gs, gv)])
    val = [ProductImage(s, f"val/{i}.jpg", image=v) for i, (s, v) in enumerate(zip(qs, qv))]
    # At most a quarter of the 4 wrong matches may stay priced: the one at 0.08; the margin sits just above 0.05.
    report = gallery.calibrate_margin(val, target_wrong=0.25, key_id="office")
    assert report.margin == pytest.approx(0.05, abs=1e-6)  # the next float32 above the 0.05 (as computed)
    assert (report.wrong_priced, report.right_uncertain, report.n_right, report.n_wrong) == (0.25, 0.25, 4, 4)
    assert report.threshold == 0.6
    # Stored with the gallery (a restart keeps it) and audited.
    assert GalleryIndex.load(tmp_path / "g").margin == report.margin
    row = gallery.history(limit=1)["items"][0]
    assert (row["action"], row["sku"], row["key_id"], row["old_price"]) == ("margin", CALIBRATION_SKU, "office", None)
    assert row["new_price"] == pytest.approx(report.margin)

    # No wrong match may stay priced: just above the largest wrong margin; every wrong one allowed: margin 0 ..
    strict = choose_margin(gallery.index, qv, qs, 0.0)
    assert strict.margin == pytest.approx(0.08, abs=1e-6) and (strict.wrong_priced, strict.right_uncertain) == (0, 0.25)
    assert choose_margin(gallery.index, qv, qs, 1.0).margin == pytest.approx(0.01, abs=1e-6)  # lowest score
    # .. and with no wrong match on validation nothing is made uncertain.
    assert choose_margin(gallery.index, qv[:4], qs[:4], 0.1).margin == 0.0  # the four right ones


def test_threshold_calibration_is_audited_and_old_galleries_have_no_margin(tmp_path):
    gv, gs, qv, qs = _constructed_validation()
    emb = VectorEmbedder()
    gallery = Gallery.create(emb, tmp_path / "g")
    gallery.add([product(s, v, 1.0) for s, v in zip(gs, gv)])
    assert gallery.index.margin is None and GalleryIndex.load(tmp_path / "g").margin is None
    report = gallery.calibrate([ProductImage(s, f"v/{i}", image=v) for i, (s, v) in enumerate(zip(qs, qv))], 0.5)
    row = gallery.history(limit=1)["items"][0]
    assert (row["action"], row["sku"], row["old_price"]) == ("threshold", CALIBRATION_SKU, None)
    assert row["new_price"] == pytest.approx(report.threshold)
    with pytest.raises(ValueError, match="margin"):
        gallery.index.set_margin(-0.1)
