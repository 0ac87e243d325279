"""The mmdet backend behind DetectionSystem: experiment mmdet_frcnn_r50 trains, validates and tests through
src.train.train (fast_dev_run, tiny world), and its predictions go through the same COCO mAP path as the
torchvision detectors: the logged numbers equal pycocotools' COCOeval run directly on them.

Needs the mmdet stack (`make install-mmdet`); runs in `make test-mmdet` (REQUIRE_MMDET=1: fails, not skips).
"""

from __future__ import annotations

import functools
import math
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

if os.environ.get("REQUIRE_MMDET") == "1":
    import mmdet  # noqa: F401  `make test-mmdet`: a missing backend must fail, not skip
else:
    pytest.importorskip("mmdet")

from src.models.detection import DetectionSystem  # noqa: E402
from src.models.detectors.mmdet_adapter import MMDetDetector  # noqa: E402
from tests.models.detection_helpers import (MMDET_FEW_PROPOSALS, MMDET_SMALL_NET, cocoeval_stats,  # noqa: E402
                                            cpu_trainer, expected_metrics, gt_batches, resize_scale)

pytestmark = pytest.mark.mmdet

# CPU-sized proposals/RoIs on top of the experiment's R50-FPN (its network is unchanged).
SMOKE_OVERRIDES = [
    "++trainer.fast_dev_run=true",
    "++data.train_sizes=[128]",
    "++data.eval_size=128",
    "++data.batch_size=2",
    "++data.num_workers=0",
    *[f"++model.net.cfg_options.{k}={v}" for k, v in MMDET_FEW_PROPOSALS.items()],
]
MAP_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def test_experiment_recipe_is_mmdets_faster_rcnn_r50(make_cfg):
    """The recipe as users get it (no smoke overrides): mmdet's own R50-FPN config, one class, no download."""
    cfg = make_cfg(["experiment=mmdet_frcnn_r50"])
    m = cfg.model.net
    assert m._target_ == "src.models.detectors.mmdet_adapter.MMDetDetector"
    assert m.config == "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"
    assert m.pretrained is False and m.num_classes == 1 and cfg.data.class_agnostic is True
    assert (cfg.monitor_metric, cfg.optimized_metric) == ("val/map", "test/map")
    assert cfg.data.train_sizes[-1] == 512 and cfg.data.batch_size == 8  # as frcnn_r50_mainbody (torchvision)


def test_mmdet_experiment_fast_dev_run(make_cfg, tmp_path):
    """One train/val/test batch of the R50-FPN through src.train.train; a checkpoint of it rebuilds from the
    file alone (src.eval / src.detect) and predicts the same boxes."""
    from src.train import train
    from src.utils.checkpoint import load_system

    cfg = make_cfg(["experiment=mmdet_frcnn_r50", *SMOKE_OVERRIDES])
    metrics, objects = train(cfg)
    for stage in ("val", "test"):
        for name in MAP_NAMES:
            key = f"{stage}/{name}"
            assert key in metrics, sorted(metrics)
            assert math.isfinite(metrics[key]) and -1.0 <= metrics[key] <= 1.0, (key, metrics[key])
    for term in ("rpn_cls", "rpn_bbox", "cls", "bbox"):  # mmdet's loss names, logged as train/loss_<term>
        assert math.isfinite(metrics[f"train/loss_{term}"]), sorted(metrics)
    system = objects["model"]
    assert isinstance(system.net, MMDetDetector)
    assert system.net.detector.backbone.depth == 50
    assert system.net.model_cfg["backbone"]["init_cfg"] is None  # pretrained off: no download instruction
    assert system.categories == [{"id": 1, "name": "product"}]

    ckpt = tmp_path / "mmdet.ckpt"
    objects["trainer"].save_checkpoint(ckpt)
    rebuilt, _ = load_system(ckpt)
    image = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))]
    system.eval()
    with torch.no_grad():
        a, b = system(image)[0], rebuilt(image)[0]
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(a[k], b[k]), k


# ---- the same mAP path as the torchvision detectors ------------------------------------------------------------

NUM_CLASSES = 3
SCALE = 0.5  # eval resize: the model sees half-size images; metrics are in the original pixels


def _scenes(n: int) -> tuple[list[np.ndarray], list[list[dict]]]:
    """Retail-world counter scenes (320x240, in memory) with their product boxes (COCO xywh)."""
    from src.data.retail_world.catalogue import make_catalogue
    from src.data.retail_world.scenes import counter_scene

    skus = make_catalogue(4, 2, 0)
    out = [counter_scene(skus, (240, 320), np.random.default_rng(seed), 2, 4) for seed in range(n)]
    return [img for img, _ in out], [objs for _, objs in out]


def _round_half(x: float) -> float:
    return round(x * 2) / 2


def _ground_truth(dets: list[dict], scene_objects: list[list[dict]], images: list[dict], seed: int = 0) -> dict:
    """COCO ground truth that gives a random-weight detector a non-trivial mAP: some of its own detections,
    jittered (IoU from ~0.5 to ~1, sometimes another class), and the scene's real products (mostly missed)."""
    rng = np.random.default_rng(seed)
    anns = []

    def add(image_id, cat, box):
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0})

    for im, objects in zip(images, scene_objects):
        own = [d for d in dets if d["image_id"] == im["id"] and min(d["bbox"][2:]) >= 4]
        for i in rng.permutation(len(own))[: max(2, len(own) // 3)]:
            d = own[i]
            x, y, w, h = d["bbox"]
            jitter = rng.choice([0.01, 0.05, 0.12])
            dx, dy, dw, dh = rng.normal(0, jitter, 4) * [w, h, w, h]
            box = [_round_half(x + dx), _round_half(y + dy), max(2.0, _round_half(w + dw)),
                   max(2.0, _round_half(h + dh))]
            cat = d["category_id"] if rng.random() > 0.15 else int(rng.integers(1, NUM_CLASSES + 1))
            add(im["id"], cat, box)
        for o in objects:
            add(im["id"], int(rng.integers(1, NUM_CLASSES + 1)), [float(v) for v in o["bbox"]])
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in range(1, NUM_CLASSES + 1)]}


def test_mmdet_predictions_map_equals_pycocotools_cocoeval():
    """mmdet's raw detections (labels shifted back to 1..C, boxes in the resized image) go through
    DetectionSystem's validation: back to original pixels, into torchmetrics' MeanAveragePrecision. The logged
    val metrics equal COCOeval's on the same detections mapped to the original pixels independently here."""
    torch.manual_seed(0)
    options = {**MMDET_FEW_PROPOSALS, **MMDET_SMALL_NET, "test_cfg.rcnn.score_thr": 0.0,
               "test_cfg.rcnn.max_per_img": 30}
    model = MMDetDetector(num_classes=NUM_CLASSES, cfg_options=options).eval()

    originals, scene_objects = _scenes(3)
    coco_images = [{"id": i + 1, "width": 320, "height": 240, "file_name": f"{i + 1}.jpg"} for i in range(3)]
    images = []
    for im, arr in zip(coco_images, originals):
        h, w, _ = resize_scale(im, SCALE)
        small = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
        images.append(torch.from_numpy(small.transpose(2, 0, 1).copy()).float().div(255))

    with torch.no_grad():
        raw = model(images)  # eval mode is deterministic: DetectionSystem's pass below gives the same boxes
    dets = []
    for im, out in zip(coco_images, raw):
        boxes = out["boxes"].double() / resize_scale(im, SCALE)[2].double()  # resized -> original pixels
        for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist()):
            dets.append({"image_id": im["id"], "category_id": lab, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    assert len({d["category_id"] for d in dets}) > 1  # the 0..C-1 -> 1..C shift is exercised on several classes

    gt = _ground_truth(dets, scene_objects, coco_images)
    stats = cocoeval_stats(gt, dets)
    assert 0.05 < stats[0] < 0.95, stats  # non-trivial: hits at several IoUs, misses and false positives

    system = DetectionSystem(model, functools.partial(torch.optim.SGD, lr=0.01))
    assert system.val_map._coco_backend.backend == "pycocotools"
    loader = DataLoader(gt_batches(gt, SCALE, images), batch_size=None, collate_fn=lambda b: b)
    cpu_trainer().validate(system, dataloaders=loader, verbose=False)
    got = {k: float(v) for k, v in system.trainer.callback_metrics.items()}
    for k, v in expected_metrics(stats, "val").items():
        assert got[k] == pytest.approx(v, abs=1e-6), (k, got[k], v)
