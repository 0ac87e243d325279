"""The one-stage CPU detector (src/models/detectors/one_stage.py): FCOS over EfficientNet-Lite0 + FPN under
torchvision's detection contract, its recipes through src.train, checkpoint and ONNX serving."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.models.detectors.one_stage import FCOSDetector, fcos
from src.models.detectors.torchvision_models import NoResizeTransform, foreground_classes

LOSS_KEYS = {"classification", "bbox_regression", "bbox_ctrness"}
NET_KEY = "net"  # DetectionSystem's network argument and config key


def _images_and_targets():
    """An image with two products of classes 3 and 1, and an empty one (FCOS's all-background case)."""
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 90]]), "labels": torch.tensor([3, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


@pytest.mark.parametrize("separable", [False, True])
def test_train_mode_finite_losses_and_every_parameter_gets_a_gradient(separable):
    torch.manual_seed(0)
    # random body, BN trainable: all of it learns
    model = fcos(num_classes=3, fpn_channels=32, num_convs=1, separable=separable)
    tower = model.head.classification_head.conv
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups == 32 for m in tower.modules()) == separable
    assert isinstance(model.transform, NoResizeTransform)
    assert model.num_classes == foreground_classes(model) == 3  # DetectionSystem's class-count check reads this
    assert model.head.classification_head.cls_logits.out_channels == 3  # one column per class, no background
    images, targets = _images_and_targets()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    total = sum(losses.values())
    assert math.isfinite(float(total.detach()))
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing


def test_labels_outside_one_to_c_fail_clearly():
    model = fcos(num_classes=2, fpn_channels=32, num_convs=1)
    images, targets = _images_and_targets()  # class 3 with num_classes=2
    with pytest.raises(ValueError, match=r"FCOS labels must be in 1\.\.2"):
        model(images, targets)
    with pytest.raises(ValueError, match="foreground classes"):
        fcos(num_classes=0)
    with pytest.raises(ValueError, match="multiple of 16"):
        fcos(fpn_channels=40)


def test_eval_boxes_in_the_input_pixels_labels_one_to_c():
    torch.manual_seed(0)
    model = fcos(num_classes=3, pretrained=True, frozen_bn=True).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 75, 101)]  # the second not a multiple of 32: padded inside
    with torch.no_grad():
        out = model(images)
    for o, img in zip(out, images):
        h, w = img.shape[-2:]
        assert list(o) == ["boxes", "labels", "scores"]  # the order ONNX outputs flatten to
        assert len(o["boxes"]) > 0 and o["boxes"].shape[1] == 4
        assert bool((o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all() and (o["boxes"] >= 0).all())
        assert set(o["labels"].tolist()) <= {1, 2, 3}
        assert bool((o["scores"] >= model.score_thresh).all() and (o["scores"] <= 1).all())
    # No resize inside: a box found at 2x the size comes back at 2x the coordinates.
    big = torch.nn.functional.interpolate(images[0][None], scale_factor=2, mode="nearest")[0]
    with torch.no_grad():
        assert model([big])[0]["boxes"][:, 2].max() > 128


def test_onnx_export_matches_eager_at_other_sizes(tmp_path):
    """Exported at 160x213, ONNX Runtime returns eager's scores (1e-4), boxes (1e-2 px) and labels at that
    size and at others (each photo keeps its aspect ratio). Before src.nn.pretrained.TraceableSamePadConv2d the
    Lite body's padding was baked in at the export size: boxes 255 px off at another size."""
    from src.inference.export import _box_diff_within_ties
    from src.inference.onnx import OrtDetectorModel, export_detector_onnx

    torch.manual_seed(0)
    model = fcos(num_classes=3, pretrained=True, frozen_bn=True, separable=True).eval()  # the recipes' head
    path = export_detector_onnx(model, tmp_path / "fcos.onnx", torch.rand(3, 160, 213))
    ort_model = OrtDetectorModel(path, threads=1)
    for h, w in [(160, 213), (128, 160), (104, 139)]:
        image = torch.rand(3, h, w)
        with torch.inference_mode():
            ref = model([image])[0]
        got = ort_model([image])[0]
        assert len(ref["boxes"]) > 10 and got["boxes"].shape == ref["boxes"].shape, (h, w)
        torch.testing.assert_close(got["scores"], ref["scores"], atol=1e-4, rtol=0)
        # A random head scores locations alike (gaps down to 2e-8): boxes whose scores tie within float noise
        # may come in either order. Each ONNX box is an eager box of the same label and a tying score.
        assert _box_diff_within_ties(got, ref) < 1e-2, (h, w)


def test_checkpoint_rebuilds_without_the_pretrained_download_and_serves(tmp_path):
    """A DetectionSystem checkpoint of the recipe's network rebuilds from its config (pretrained turned off,
    frozen BN kept) and src.inference serves it: boxes in the photo's pixels, best first."""
    from hydra.utils import instantiate

    from src.inference.checkpoint import CONFIG_KEY
    from src.inference.detector import load_detector

    config = {"model": {"_target_": "src.models.detection.DetectionSystem", "class_agnostic": True,
                        NET_KEY: {"_target_": "src.models.detectors.one_stage.fcos", "num_classes": 1,
                                  "pretrained": True, "frozen_bn": True},
                        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}},
              "data": {"eval_size": 96, "max_size": 160}}
    torch.manual_seed(0)
    system = instantiate(config["model"])
    net = getattr(system, NET_KEY)
    assert isinstance(net, FCOSDetector)
    torch.save({"state_dict": system.state_dict(), CONFIG_KEY: config}, tmp_path / "det.ckpt")
    det = load_detector(tmp_path / "det.ckpt", score_threshold=0.0)
    photo = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    d = det.detect(photo)
    assert len(d) > 0 and (d.boxes[:, 2] <= 320).all() and (d.boxes[:, 3] <= 240).all()
    assert (np.diff(d.scores) <= 0).all()
    # The same network: eager on the photo resized as src.inference resizes it gives the same boxes, x2.5.
    from src.data.images import resize_shorter_side

    small, _ = resize_shorter_side(photo, 96, 160)
    with torch.no_grad():
        ref = net.eval()([torch.from_numpy(small.transpose(2, 0, 1).copy()).float().div(255)])[0]
    assert float(d.scores[0]) == pytest.approx(float(ref["scores"].max()), abs=1e-5)
    np.testing.assert_allclose(d.boxes[0], ref["boxes"][ref["scores"].argmax()].numpy() * 2.5, atol=1e-3)


@pytest.mark.parametrize("experiment, classes", [("fcos_lite0_counter", 8), ("fcos_lite0_mainbody", 1)])
def test_recipe_fast_dev_run(make_cfg, experiment, classes):
    """One step of training, validation and test of each recipe through src.train at 128 px."""
    from src.train import train

    cfg = make_cfg([f"experiment={experiment}", "++trainer.fast_dev_run=true", "++data.train_sizes=[128]",
                    "++data.eval_size=128", "++data.max_size=192", "++data.batch_size=2"])
    assert cfg.model[NET_KEY]._target_ == "src.models.detectors.one_stage.fcos"
    assert cfg.model[NET_KEY].num_classes == classes  # foreground only
    metrics, objects = train(cfg)
    for k in ("test/map", "test/map_50", "train/loss", *(f"train/loss_{k}" for k in LOSS_KEYS)):
        assert k in metrics, sorted(metrics)
    assert -1.0 <= metrics["test/map"] <= 1.0 and math.isfinite(metrics["train/loss"])
    assert len(objects["model"].categories) == classes
