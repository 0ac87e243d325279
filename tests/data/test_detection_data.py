"""Detection data: boxes follow the pixels through flip and multi-scale resize, COCO files are read into
torchvision targets (labels, empty images, degenerate boxes), bad annotations are one clear error, aspect-ratio
batches, and video frames read by index."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler
from torchvision.transforms.v2 import Compose, RandomHorizontalFlip

from src.data.images import shorter_side_shape
from src.data import keys
from src.data.detection import (GroupedBatchSampler, CocoDetectionDataset, DetectionDataModule,
                                orientation_groups, collate_detection, scale_boxes)
from src.data.detection_transforms import RandomShortestSideResize, ToTensor, eval_transforms, train_transforms
from src.data.readers import DataFormatError
from src.data.video import VideoReadError, read_video_frames

H, W = 90, 150
# Solid rectangles (x1, y1, x2, y2) in distinct colours on a grey background; one touches the right border.
RECTS = [((10, 8, 50, 60), (230, 30, 30)), ((70, 40, 100, 85), (30, 200, 40)), ((112, 5, 150, 35), (40, 60, 240))]
BG = (128, 128, 128)


def _canvas() -> np.ndarray:
    img = np.full((H, W, 3), BG, np.uint8)
    for (x1, y1, x2, y2), c in RECTS:
        img[y1:y2, x1:x2] = c
    return img


def _target() -> dict:
    return {"boxes": np.array([r for r, _ in RECTS], np.float32), "labels": np.arange(1, 4)}


def _mean_inside(img: np.ndarray, box, margin: float) -> np.ndarray:
    """Mean colour of the box shrunk by `margin` px (resampling blurs the edges)."""
    x1, y1, x2, y2 = box
    return img[int(np.ceil(y1 + margin)):int(np.floor(y2 - margin)),
               int(np.ceil(x1 + margin)):int(np.floor(x2 - margin))].reshape(-1, 3).mean(0)


# ---- (c) boxes stay on the objects --------------------------------------------------------------------------

def _flip(p: float) -> tuple:
    """torchvision's flip on the canvas as ToTensor hands it on; the image back as 0..255 HxWx3 to compare."""
    img, t = RandomHorizontalFlip(p=p)(*ToTensor()(_canvas(), _target()))
    return (img.permute(1, 2, 0).numpy() * 255).round(), {**t, "boxes": t["boxes"].numpy()}


def test_flip_moves_boxes_with_pixels():
    img, t = _flip(p=1.0)
    expected = np.array([[W - x2, y1, W - x1, y2] for (x1, y1, x2, y2), _ in RECTS], np.float32)
    np.testing.assert_array_equal(t["boxes"], expected)
    for box, (_, colour) in zip(t["boxes"], RECTS):
        np.testing.assert_allclose(_mean_inside(img, box, 0), colour)  # exact: a flip does not resample
    img, t = _flip(p=0.0)
    np.testing.assert_array_equal(t["boxes"], _target()["boxes"])


@pytest.mark.parametrize("short_side, max_size", [(45, None), (60, None), (180, None), (270, 300)])
def test_resize_scales_boxes_exactly_and_keeps_them_on_the_objects(short_side, max_size):
    img, t = RandomShortestSideResize([short_side], max_size)(_canvas(), _target())
    oh, ow = img.shape[:2]
    if max_size is None:
        assert oh == short_side  # H is the shorter side
    else:
        assert max(oh, ow) <= max_size and ow == max_size  # the cap wins: 270/90*150 = 450 > 300
    expected = _target()["boxes"] * np.array([ow / W, oh / H, ow / W, oh / H], np.float32)
    np.testing.assert_allclose(t["boxes"], expected, rtol=1e-6)
    for box, (_, colour) in zip(t["boxes"], RECTS):
        np.testing.assert_allclose(_mean_inside(img, box, margin=1.5), colour, atol=4)


def test_multiscale_draws_every_size_and_flip_composes():
    torch.manual_seed(0)
    tf = train_transforms([45, 60, 75], max_size=None, hflip_prob=0.5)
    seen, flipped = set(), 0
    for _ in range(40):
        img, t = tf(_canvas(), _target())
        h, w = img.shape[-2:]
        seen.add(h)
        assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and float(img.max()) <= 1.0
        rgb = (img.permute(1, 2, 0).numpy() * 255).round()
        for box, (_, colour) in zip(t["boxes"].numpy(), RECTS):
            np.testing.assert_allclose(_mean_inside(rgb, box, margin=1.5), colour, atol=5)
        flipped += bool(t["boxes"][0, 0] > w / 2)  # the red rectangle sits on the left unless flipped
    assert seen == {45, 60, 75}
    assert 8 < flipped < 32  # p=0.5 over 40 draws


def test_resized_shape_follows_torchvision_rule():
    assert shorter_side_shape(240, 320, 608, None) == (608, 811)
    assert shorter_side_shape(240, 320, 608, 1000) == (608, 811)
    assert shorter_side_shape(240, 960, 600, 1000) == (250, 1000)  # long side capped
    assert shorter_side_shape(320, 240, 160, None) == (213, 160)  # portrait
    assert shorter_side_shape(240, 320, None, 1000) == (240, 320)  # no resize asked
    assert shorter_side_shape(240, 320, 608, None, shrink_only=True) == (240, 320)  # never enlarged
    assert shorter_side_shape(1200, 1600, 608, None, shrink_only=True) == (608, 811)


# ---- COCO dataset -------------------------------------------------------------------------------------------

def _write_coco(folder: Path, anns: list[dict], images: list[dict] | None = None,
                categories: list[dict] | None = None, name: str = "ann.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "img/a.png"), cv2.cvtColor(_canvas(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "img/empty.png"), np.full((60, 40, 3), 128, np.uint8))
    images = images if images is not None else [
        {"id": 10, "file_name": "img/a.png", "width": W, "height": H},
        {"id": 11, "file_name": "img/empty.png", "width": 40, "height": 60}]
    categories = categories if categories is not None else [
        {"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 11, "name": "eleven"}]
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def _rect_anns(cat_ids=(7, 3, 11)) -> list[dict]:
    return [{"id": i + 1, "image_id": 10, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0,
             "area": (x2 - x1) * (y2 - y1)} for i, (((x1, y1, x2, y2), _), c) in enumerate(zip(RECTS, cat_ids))]


def test_coco_dataset_targets_labels_and_empty_image(tmp_path):
    ann = _write_coco(tmp_path, _rect_anns())
    ds = CocoDetectionDataset(ann, transform=train_transforms([45], None, 0.0))
    assert ds.categories == [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}, {"id": 11, "name": "eleven"}]
    assert ds.label_to_category_id == {1: 3, 2: 7, 3: 11}
    item = ds[0]
    t = item[keys.TARGET]
    assert t["labels"].tolist() == [2, 1, 3]  # category ids 7, 3, 11 in sorted-id order
    assert t["image_id"].item() == 10 and t["orig_size"].tolist() == [H, W]
    np.testing.assert_allclose(t["boxes"].numpy(), np.array([r for r, _ in RECTS]) * 0.5, rtol=1e-6)
    back = scale_boxes(t["boxes"], item[keys.IMAGE].shape[-2:], t["orig_size"].tolist())
    np.testing.assert_allclose(back.numpy(), np.array([r for r, _ in RECTS]), rtol=1e-6)
    empty = ds[1][keys.TARGET]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64
    agnostic = CocoDetectionDataset(ann, class_agnostic=True)
    assert agnostic[0][keys.TARGET]["labels"].tolist() == [1, 1, 1] and agnostic.categories == [{"id": 1, "name": "product"}]
    batch = collate_detection([ds[0], None, ds[1]])  # an unreadable image (None) is dropped
    assert len(batch[keys.IMAGE]) == 2 and len(batch[keys.TARGET]) == 2
    assert collate_detection([None]) is None


def test_degenerate_boxes_dropped_with_a_warning(tmp_path, caplog):
    anns = _rect_anns() + [{"id": 9, "image_id": 10, "category_id": 3, "bbox": [60, 60, 1.5, 20], "iscrowd": 0}]
    ds = CocoDetectionDataset(_write_coco(tmp_path, anns), transform=eval_transforms(45))  # scale 0.5: 0.75 px wide
    with caplog.at_level(logging.WARNING):
        t = ds[0][keys.TARGET]
    assert len(t["boxes"]) == 3 and bool(((t["boxes"][:, 2:] - t["boxes"][:, :2]) >= 1).all())
    assert "dropped 1 box" in caplog.text and "[9]" in caplog.text and "ann.json" in caplog.text


def test_unreadable_image_is_skipped_or_raised(tmp_path):
    ann = _write_coco(tmp_path, _rect_anns())
    (tmp_path / "img/a.png").write_bytes(b"not a png")
    assert CocoDetectionDataset(ann)[0] is None
    with pytest.raises(OSError, match="a.png"):
        CocoDetectionDataset(ann, on_error="raise")[0]


# ---- (d) bad annotations: one clear error naming the file -----------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ({"bbox": [140, 10, 30, 20]}, r"annotation 1 box .* lies outside image 10 \(150x90\)"),
    ({"bbox": [10, 10, -5, 20]}, r"annotation 1 has non-positive box size w=-5"),
    ({"image_id": 99}, r"annotation 1 refers to unknown image_id 99"),
    ({"category_id": 4}, r"annotation 1 has unknown category_id 4"),
    ({"bbox": [1, 2, 3]}, r"annotation 1 bbox must be \[x, y, w, h\]"),
])
def test_bad_annotation_is_a_clear_error_naming_the_file(tmp_path, bad, message):
    anns = _rect_anns()
    anns[0] = {**anns[0], **bad}
    ann = _write_coco(tmp_path, anns, name="bad.json")
    with pytest.raises(DataFormatError, match=message) as err:
        CocoDetectionDataset(ann)
    assert str(ann) in str(err.value)


def test_empty_or_broken_file_and_size_mismatch_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DataFormatError, match=r"empty\.json: COCO annotation file is empty"):
        CocoDetectionDataset(empty)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DataFormatError, match=r"broken\.json:1: not valid JSON"):
        CocoDetectionDataset(broken)
    wrong = _write_coco(tmp_path, _rect_anns(), images=[{"id": 10, "file_name": "img/a.png", "width": 200,
                                                         "height": 90}], name="wrong.json")
    with pytest.raises(DataFormatError, match=r"wrong\.json: image 10 .* is 150x90 on disk but 200x90"):
        CocoDetectionDataset(wrong)[0]


def test_datamodule_checks_class_count_and_groups_batches(tmp_path):
    class Source:
        root = tmp_path

        def prepare(self):
            pass

    ann = _write_coco(tmp_path, _rect_anns())
    dm = DetectionDataModule(Source(), ann.name, ann.name, num_classes=3, train_sizes=[45], eval_size=45,
                             batch_size=1)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 3
    batch = next(iter(dm.val_dataloader()))
    assert batch[keys.IMAGE][0].shape[-2:] == (45, 75)
    dm = DetectionDataModule(Source(), ann.name, ann.name, num_classes=8)
    with pytest.raises(DataFormatError, match=r"ann\.json: 3 categories .* but data.num_classes=8"):
        dm.setup("fit")


# ---- aspect-ratio batches --------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop_last", [False, True])
def test_aspect_ratio_batches_are_homogeneous_and_counted(drop_last):
    ratios = [1.33, 0.75, 1.5, 0.6, 1.0, 1.33, 0.75, 0.75, 1.78, 0.5, 1.2]  # 6 wide, 5 tall
    groups = orientation_groups(ratios)
    assert groups == [0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0]
    torch.manual_seed(0)
    sampler = GroupedBatchSampler(RandomSampler(range(len(ratios))), groups, batch_size=4, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (2 if drop_last else 3)
    full = [b for b in batches if len(b) == 4]
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(full) >= 2 and all(len({groups[i] for i in b}) == 1 for b in full[:2])  # one group per full batch
    assert len(mixed) <= 1  # only the leftover chunk may mix groups
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    if not drop_last:
        assert sorted(seen) == list(range(len(ratios)))
    seq = list(GroupedBatchSampler(SequentialSampler(range(len(ratios))), groups, 2))
    assert seq[0] == [0, 2] and seq[1] == [1, 3]


# ---- video frames --------------------------------------------------------------------------------------------

def _write_video(path: Path, n: int, h: int = 48, w: int = 64) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((h, w, 3), i * 10, np.uint8))  # frame i is grey level 10*i
    writer.release()


def test_read_video_frames_by_index_resized_and_past_the_end(tmp_path, caplog):
    video = tmp_path / "clip.avi"
    _write_video(video, 12)
    with caplog.at_level(logging.WARNING):
        frames = read_video_frames(video, [7, 2, 30, 2], short_side=24, keep_original=True)
    assert [f.index for f in frames] == [2, 7]
    for f in frames:
        assert f.image.shape == (24, 32, 3) and f.orig_size == (48, 64) and f.original.shape == (48, 64, 3)
        assert abs(float(f.original.mean()) - 10 * f.index) < 3  # the frame asked for, not a neighbour
    assert "[30]" in caplog.text and "past the end" in caplog.text
    with pytest.raises(VideoReadError, match="no frame could be decoded"):
        read_video_frames(video, [40])


def test_unreadable_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoReadError, match=r"bad\.mp4"):
        read_video_frames(bad, [0])
    with pytest.raises(VideoReadError, match="not found"):
        read_video_frames(tmp_path / "missing.mp4", [0])


def test_compose_and_to_tensor_keep_extra_keys():
    tf = Compose([RandomShortestSideResize([45]), ToTensor()])
    img, t = tf(_canvas(), {**_target(), "ann_ids": [1, 2, 3]})
    assert img.shape == (3, 45, 75) and t["ann_ids"] == [1, 2, 3] and t["boxes"].dtype == torch.float32


@pytest.mark.parametrize("hflip_prob", [0.5, 0.0])
def test_train_transforms_equal_a_hand_computed_pipeline(hflip_prob):
    """Same seed, same draws (size from torch.randint, then the flip from torch.rand unless p=0), same pixels and
    boxes bit for bit as resizing with src.data.images and flipping / scaling by hand."""
    from src.data.images import resize_to

    sizes, max_size = [40, 56, 70], 100
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(90, 150), (61, 47), (33, 120)] * 4]
    boxes = [np.sort(rng.uniform(-2, max(im.shape[:2]) + 2, (k, 4)).astype(np.float32).reshape(k, 2, 2), axis=1)
             .transpose(0, 2, 1).reshape(k, 4) for k, im in zip([0, 1, 3] * 4, images)]  # some outside the image
    tf = train_transforms(sizes, max_size, hflip_prob)
    torch.manual_seed(3)
    got = [tf(im, {"boxes": b, "labels": np.arange(len(b)), "ann_ids": list(range(len(b)))})
           for im, b in zip(images, boxes)]
    rng_after = torch.get_rng_state()
    torch.manual_seed(3)
    for (img, t), im, b in zip(got, images, boxes):
        size = sizes[int(torch.randint(len(sizes), ()).item())]
        oh, ow = shorter_side_shape(*im.shape[:2], size, max_size)
        ref = resize_to(im, oh, ow)
        ref_boxes = b * np.array([ow / im.shape[1], oh / im.shape[0]] * 2, np.float32)
        if hflip_prob > 0 and torch.rand(()).item() < hflip_prob:
            ref = ref[:, ::-1]
            ref_boxes = np.stack([ow - ref_boxes[:, 2], ref_boxes[:, 1], ow - ref_boxes[:, 0], ref_boxes[:, 3]], 1)
        ref = torch.from_numpy(np.ascontiguousarray(ref.transpose(2, 0, 1))).float().div_(255)
        assert type(img) is torch.Tensor and type(t["boxes"]) is torch.Tensor
        assert torch.equal(img, ref)
        assert torch.equal(t["boxes"], torch.from_numpy(ref_boxes.astype(np.float32)).reshape(-1, 4))
        np.testing.assert_array_equal(t["labels"], np.arange(len(b)))
        assert t["ann_ids"] == list(range(len(b)))
    assert torch.equal(torch.get_rng_state(), rng_after)  # no other draws (p=0: none for the flip)
