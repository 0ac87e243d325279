"""DetectionSystem: COCO mAP equal to pycocotools' COCOeval, loss logging and its guards, a tiny detector that
overfits four generated scenes, the timm/torchvision factories and a fast_dev_run of the demo experiment."""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from src.data import keys
from src.data.detection import DetectionDataModule
from src.data.sources import RetailWorld
from src.models.detection import DetectionSystem
from src.models.detectors.torchvision_models import (NoResizeTransform, fasterrcnn, fasterrcnn_timm,
                                                      foreground_classes)
from tests.models.detection_helpers import (cocoeval_stats, cpu_trainer, expected_metrics, gt_batches, resize_scale,
                                            xyxy)

log = logging.getLogger(__name__)
SGD = functools.partial(torch.optim.SGD, lr=0.01)


# ---- (a) mAP equals pycocotools' COCOeval -----------------------------------------------------------------------

class LookupDetector(nn.Module):
    """Returns fixed predictions per image; the image's first pixel holds its index (a stub for any detector)."""

    def __init__(self, predictions: list[dict]) -> None:
        super().__init__()
        self.predictions = predictions
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images, targets=None):
        return [self.predictions[int(round(float(img[0, 0, 0]) * 255))] for img in images]


def _hand_made_set(seed: int = 0):
    """5 images (300x200), 3 classes with ids 2, 5, 9; GT boxes of small (<32^2), medium and large area;
    predictions: jittered GT boxes (some hit IoU .75, some only .5, some miss), a wrong class, false
    positives, a missed object, and an image with no ground truth at all. Half-pixel coordinates are exact in
    float32, so both evaluators see the same numbers."""
    rng = np.random.default_rng(seed)
    W, H = 300, 200
    cat_ids = [2, 5, 9]
    images, anns, dets = [], [], []
    for img_id in range(1, 6):
        images.append({"id": img_id, "width": W, "height": H, "file_name": f"{img_id}.jpg"})
        n_obj = 0 if img_id == 5 else int(rng.integers(2, 6))
        for _ in range(n_obj):
            side = rng.choice([rng.uniform(8, 28), rng.uniform(40, 90), rng.uniform(100, 150)])
            w, h = round(side * rng.uniform(0.7, 1.3) * 2) / 2, round(side * rng.uniform(0.7, 1.3) * 2) / 2
            x, y = round(rng.uniform(0, W - w) * 2) / 2, round(rng.uniform(0, H - h) * 2) / 2
            cat = int(rng.choice(cat_ids))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if rng.random() < 0.15:
                continue  # missed
            jitter = rng.choice([0.01, 0.03, 0.08])
            dx, dy, dw, dh = (rng.normal(0, jitter, 4) * [w, h, w, h] * 2).round() / 2
            dcat = cat if rng.random() > 0.1 else int(rng.choice(cat_ids))
            dets.append({"image_id": img_id, "category_id": dcat,
                         "bbox": [float(x + dx), float(y + dy), float(max(1.0, w + dw)), float(max(1.0, h + dh))],
                         "score": float(rng.uniform(0.05, 1.0))})
        for _ in range(int(rng.integers(0, 3))):  # false positives
            w, h = float(rng.integers(10, 80)), float(rng.integers(10, 80))
            dets.append({"image_id": img_id, "category_id": int(rng.choice(cat_ids)),
                         "bbox": [float(rng.integers(0, W - 80)), float(rng.integers(0, H - 80)), w, h],
                         "score": float(rng.uniform(0.05, 1.0))})
    categories = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _batches(gt: dict, dets: list[dict], scale: float) -> tuple[list[dict], list[dict]]:
    """One image per batch at `scale` of its original size (the eval resize); GT and predictions in the resized
    pixels as a real detector would return them, orig_size the original."""
    preds = []
    for im in gt["images"]:
        s = resize_scale(im, scale)[2]
        d = [x for x in dets if x["image_id"] == im["id"]]
        preds.append({"boxes": torch.tensor([xyxy(x["bbox"]) for x in d]).reshape(-1, 4) * s,
                      "scores": torch.tensor([x["score"] for x in d]),
                      "labels": torch.tensor([x["category_id"] for x in d], dtype=torch.int64)})
    return preds, gt_batches(gt, scale)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_map_equals_pycocotools_cocoeval(scale):
    """The module's val metrics are COCOeval's numbers on the same boxes. At scale 0.5 the images (and the
    detector's boxes) are half size: equal numbers show boxes go back to original pixels, where COCO's
    small/medium/large area ranges are defined."""
    gt, dets = _hand_made_set()
    stats = cocoeval_stats(gt, dets)
    assert 0.2 < stats[0] < 0.9 and stats[3] > 0 and stats[5] > 0  # a non-trivial case in every area range
    preds, batches = _batches(gt, dets, scale)
    system = DetectionSystem(LookupDetector(preds), SGD)
    # The reference implementation itself, not faster_coco_eval (torchmetrics keeps the choice private).
    assert system.val_map._coco_backend.backend == "pycocotools"
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    cpu_trainer().validate(system, dataloaders=loader, verbose=False)
    got = {k: float(v) for k, v in _trainer_metrics(system).items()}
    for k, v in expected_metrics(stats, "val").items():
        assert got[k] == pytest.approx(v, abs=1e-6), (k, got[k], v)


def _trainer_metrics(system):
    return system.trainer.callback_metrics


def test_detection_picture_saved_and_sent_to_tensorboard(tmp_path):
    """The callback draws validation predictions vs ground truth, writes a PNG in the run dir and logs the same
    picture to TensorBoard (read back from the event file)."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from src.callbacks.detection_images import DetectionImageLogger

    gt, dets = _hand_made_set()
    preds, batches = _batches(gt, dets, 0.5)
    cb = DetectionImageLogger(num_images=3, score_threshold=0.3)
    tb = TensorBoardLogger(str(tmp_path / "tb"), name=None)
    cpu_trainer(default_root_dir=str(tmp_path), callbacks=[cb], logger=tb).validate(
        DetectionSystem(LookupDetector(preds), SGD), dataloaders=DataLoader(batches, batch_size=None,
                                                                            collate_fn=lambda b: b), verbose=False)
    (png,) = cb.saved
    assert png.parent == tmp_path / "detections"
    picture = cv2.imread(str(png))
    assert picture.shape[0] == 240 and picture.shape[1] > 3 * 300  # three panels at height 240
    # Ground-truth green is drawn: some pure-green pixels exist on a black image.
    assert ((picture[..., 1] > 200) & (picture[..., 2] < 50)).sum() > 100
    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "val/detections" in events.Tags()["images"]


# ---- training step contract -----------------------------------------------------------------------------------

class ConstantLossDetector(nn.Module):
    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))
        self.value = value
        self.seen_targets = []

    def forward(self, images, targets=None):
        self.seen_targets.append(targets)
        return {"loss_classifier": self.value * self.w, "loss_box_reg": 2 * self.value * self.w ** 2}


def _one_batch(labels=(3, 1), iscrowd=(0, 1)):
    t = {"boxes": torch.tensor([[1.0, 1, 5, 5], [2, 2, 8, 8]]), "labels": torch.tensor(labels),
         "iscrowd": torch.tensor(iscrowd), "image_id": torch.tensor(1), "orig_size": torch.tensor([10, 10])}
    return {keys.IMAGE: [torch.zeros(3, 10, 10)], keys.TARGET: [t]}


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_losses_logged_per_term_and_targets_cleaned():
    model = ConstantLossDetector()
    system = DetectionSystem(model, SGD, class_agnostic=True)
    trainer = cpu_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(system, train_dataloaders=DataLoader([_one_batch()], batch_size=None, collate_fn=lambda b: b))
    m = trainer.callback_metrics
    assert float(m["train/loss_classifier"]) == pytest.approx(1.0)
    assert float(m["train/loss_box_reg"]) == pytest.approx(2.0)
    assert float(m["train/loss"]) == pytest.approx(3.0)
    (sent,) = model.seen_targets[0]
    assert set(sent) == {"boxes", "labels"}  # only what every detector accepts
    assert sent["labels"].tolist() == [1] and sent["boxes"].shape == (1, 4)  # crowd box dropped, agnostic label


def test_non_finite_loss_stops_with_a_clear_error():
    system = DetectionSystem(ConstantLossDetector(float("nan")), SGD)
    with pytest.raises(FloatingPointError, match=r"non-finite detection loss .*loss_classifier"):
        system.training_step(_one_batch(), 0)


class _CategoriesDM(L.LightningDataModule):
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]

    def val_dataloader(self):
        return DataLoader([_one_batch()], batch_size=None, collate_fn=lambda b: b)


def test_class_count_mismatch_is_a_clear_error():
    model = fasterrcnn("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=9)  # 8 foreground, data has 3
    assert foreground_classes(model) == 8
    with pytest.raises(ValueError, match=r"predicts 8 foreground classes but the data has 3.*num_classes to 4"):
        cpu_trainer().validate(DetectionSystem(model, SGD), datamodule=_CategoriesDM(), verbose=False)


# ---- factories ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, out_indices", [("resnet18", (1, 2, 3, 4)), ("mobilenetv3_large_100", (2, 3, 4)),
                                                   ("ese_vovnet19b_dw", (1, 2, 3, 4))])
def test_fasterrcnn_timm_trains_and_predicts(backbone, out_indices):
    torch.manual_seed(0)
    model = fasterrcnn_timm(backbone, num_classes=3, out_indices=out_indices, fpn_channels=32,
                            rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=20, box_batch_size_per_image=32)
    levels = len(out_indices) + 1  # + max-pooled level
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * levels
    assert isinstance(model.transform, NoResizeTransform)
    # An image with objects and an empty one (torchvision's background-only case): finite losses, gradients.
    images = [torch.rand(3, 72, 96), torch.rand(3, 64, 80)]
    targets = [{"boxes": torch.tensor([[10.0, 12, 60, 70]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert math.isfinite(float(total.detach()))
    total.backward()
    assert model.backbone.body.parameters().__next__().grad is not None
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    # No resize inside the model: boxes live in the input's pixels.
    for o, (h, w) in zip(out, [(72, 96), (64, 80)]):
        assert bool((o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all())


def test_fasterrcnn_torchvision_options():
    m = fasterrcnn("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2)
    assert isinstance(m.transform, NoResizeTransform)
    m = fasterrcnn("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, min_size=[200, 240], max_size=400)
    assert m.transform.min_size == (200, 240) and m.transform.max_size == 400
    with pytest.raises(ValueError, match="unknown torchvision Faster R-CNN"):
        fasterrcnn("fasterrcnn_resnet18_fpn", num_classes=2)
    # torchvision freezes this backbone's BN when it loads weights; checkpoints are rebuilt without weights, so
    # the flag must be explicit (checked before any download).
    with pytest.raises(ValueError, match="set frozen_bn=true"):
        fasterrcnn("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, pretrained=True)
    frozen = fasterrcnn("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, frozen_bn=True)
    keys_ = frozen.state_dict().keys()
    assert not [k for k in keys_ if k.startswith("backbone.body") and k.endswith("num_batches_tracked")]
    assert any(k.startswith("backbone.body") and k.endswith("running_var") for k in keys_)


# ---- (b) a tiny detector overfits four generated scenes ------------------------------------------------------

OVERFIT_STEPS = 100  # 40 steps left one machine at 0.48: too close to the bar to mean anything
OVERFIT_BAR = 0.75  # worst measured here at 100 steps over 5 seeds x 1 and 2 threads: 0.94 (see the test)


def overfit_tiny_detector(tmp_path, seed: int, steps: int, val_every: int) -> list[float]:
    """mAP@50 on the training scenes before training and after every `val_every` steps."""
    L.seed_everything(seed)
    source = RetailWorld(str(tmp_path / "data"), num_families=4, variants_per_family=2, num_train_skus=4,
                         train_views=1, val_views=1, gallery_views=1, query_views=1, train_scenes=4, val_scenes=1)
    dm = DetectionDataModule(source, "annotations/scenes_train.json", "annotations/scenes_train.json",
                             class_agnostic=True, num_classes=1, train_sizes=[128], eval_size=128, max_size=None,
                             hflip_prob=0.0, batch_size=4)
    model = fasterrcnn_timm("resnet18", num_classes=2, out_indices=(2, 3, 4), fpn_channels=64,
                            anchor_sizes=(32, 64, 128, 256), rpn_pre_nms_top_n_train=200,
                            rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100,
                            rpn_batch_size_per_image=64, box_batch_size_per_image=64)
    opt = functools.partial(torch.optim.AdamW, lr=2e-3, weight_decay=1e-4)
    system = DetectionSystem(model, opt, class_agnostic=True)
    curve = []

    class Record(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                curve.append(float(trainer.callback_metrics["val/map_50"]))

    trainer = cpu_trainer(max_epochs=steps, check_val_every_n_epoch=val_every, gradient_clip_val=10.0,
                          log_every_n_steps=1, callbacks=[Record()])
    trainer.validate(system, datamodule=dm, verbose=False)
    trainer.fit(system, datamodule=dm)
    assert trainer.global_step == steps
    return curve


@pytest.mark.numeric
def test_tiny_detector_overfits_four_scenes(tmp_path):
    """Class-agnostic ResNet-18 FPN at 128 px on 4 scenes, full-batch AdamW, no flips: mAP@50 on those scenes
    rises from ~0 to near 1. Results are deterministic per machine, not across machines (seed 0 gave 0.86 on one
    EPYC and 0.48 on another after 40 steps), so the bar comes from a measured spread (2026-12-03, seeds 0-4,
    mAP@50 after 40 / 80 / 100 / 120 steps): 1 thread 0.54-0.83 / 0.82-1.00 / 0.94-1.00 / 0.99-1.00,
    2 threads 0.56-0.81 / 0.82-0.98 / 0.96-1.00 / 0.96-1.00. At 100 steps the worst case is 0.94; the bar
    is 0.75. ~40 s on 2 idle cores."""
    t0 = time.time()
    before, after = overfit_tiny_detector(tmp_path, seed=0, steps=OVERFIT_STEPS, val_every=OVERFIT_STEPS)
    print(f"overfit mAP@50 {before:.3f} -> {after:.3f} ({OVERFIT_STEPS} steps, {time.time() - t0:.0f} s)")
    assert before < 0.2
    assert after > OVERFIT_BAR and after > before + 0.5


# ---- (f) the demo experiment through train(cfg) ----------------------------------------------------------------

@pytest.mark.parametrize("experiment, overrides", [
    ("detection_demo", []),
    # torchvision's MobileNetV3 FPN with 8 categories; small images keep the smoke run short.
    ("frcnn_mnv3_counter", ["++data.train_sizes=[160]", "++data.eval_size=160", "++data.batch_size=2",
                            "++model.net.rpn_post_nms_top_n_train=200", "++model.net.rpn_post_nms_top_n_test=100"]),
])
def test_detection_experiment_fast_dev_run(make_cfg, experiment, overrides):
    from src.train import train

    cfg = make_cfg([f"experiment={experiment}", "++trainer.fast_dev_run=true", *overrides])
    metrics, objects = train(cfg)
    for k in ("test/map", "test/map_50", "test/map_75", "test/map_small", "test/map_medium", "test/map_large",
              "train/loss", "train/loss_objectness"):
        assert k in metrics, sorted(metrics)
    assert -1.0 <= metrics["test/map"] <= 1.0
    pictures = list(Path(cfg.paths.output_dir, "detections").glob("*.png"))
    assert pictures, "DetectionImageLogger saved no PNG in the run dir"
    system = objects["model"]
    agnostic = experiment == "detection_demo"
    assert len(system.categories) == (1 if agnostic else 8)
    assert (system.categories[0] == {"id": 1, "name": "product"}) == agnostic
    (report,) = system.report_artifacts(Path(cfg.paths.output_dir) / "report")
    assert report.is_file() and report.stat().st_size > 1000


def test_checkpoint_from_before_the_rename_to_net_loads(tmp_path):
    """Checkpoints written when the detector was `model` (config `model.model`, weights `model.*`) still load."""
    from src.utils.checkpoint import CONFIG_KEY, load_system

    net = nn.Linear(2, 3)
    config = {"model": {"_target_": "src.models.detection.DetectionSystem",
                        "model": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 3},
                        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}}}
    old = {CONFIG_KEY: config, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}
    torch.save(old, tmp_path / "old.ckpt")
    system, cfg = load_system(tmp_path / "old.ckpt")
    assert "net" in cfg.model and "model" not in cfg.model
    assert torch.equal(system.net.weight, net.weight) and torch.equal(system.net.bias, net.bias)

    fresh = DetectionSystem(nn.Linear(2, 3), SGD)  # Lightning's own restore path: on_load_checkpoint first
    ckpt = {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    assert torch.equal(fresh.net.weight, net.weight)
    assert not hasattr(fresh, "model")  # one name for the network: the alias is gone
