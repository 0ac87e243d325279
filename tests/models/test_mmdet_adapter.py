"""MMDetDetector: torchvision detection contract on top of mmdet's Faster R-CNN (tiny, CPU).

Needs the mmdet stack (scripts/install_mmdet.sh); run in its own CI step with `-m mmdet`.
"""

import math
import os
import pickle

import numpy as np
import pytest
import torch

if os.environ.get("REQUIRE_MMDET") == "1":
    import mmdet  # `make test-mmdet`: a missing backend must fail, not skip
else:
    mmdet = pytest.importorskip("mmdet")

from src.models.detectors.mmdet_adapter import (  # noqa: E402
    MMDetDetector,
    build_model_config,
    load_mmdet_checkpoint,
)
from tests.models.detection_helpers import MMDET_FEW_PROPOSALS as FEW_PROPOSALS  # noqa: E402
from tests.models.detection_helpers import MMDET_SMALL_NET as SMALL_NET  # noqa: E402

pytestmark = pytest.mark.mmdet

NUM_CLASSES = 3
STEPS = 30  # overfitting steps on one image


def make_model(seed=0, small=True, **extra):
    torch.manual_seed(seed)
    options = {**FEW_PROPOSALS, **(SMALL_NET if small else {}), **extra}
    return MMDetDetector(num_classes=NUM_CLASSES, cfg_options=options)


def scene(h, w, boxes, colours, seed=0):
    """RGB float image in 0..1: dim noisy background with solid coloured rectangles."""
    g = torch.Generator().manual_seed(seed)
    img = 0.1 + 0.05 * torch.rand(3, h, w, generator=g)
    for (x1, y1, x2, y2), c in zip(boxes, colours):
        img[:, y1:y2, x1:x2] = torch.tensor(c, dtype=torch.float32).view(3, 1, 1)
    return img


def two_images():
    # Different sizes (not multiples of 32) exercise padding and per-image shapes.
    b0 = [(10, 12, 60, 70), (70, 30, 140, 100)]
    b1 = [(20, 20, 90, 80)]
    images = [
        scene(120, 150, b0, [(1, 0, 0), (0, 1, 0)], seed=1),
        scene(96, 128, b1, [(0, 0, 1)], seed=2),
    ]
    targets = [
        {"boxes": torch.tensor(b0, dtype=torch.float32), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor(b1, dtype=torch.float32), "labels": torch.tensor([3])},
    ]
    return images, targets


def test_config_is_the_shipped_faster_rcnn_without_pretrained_download():
    cfg = build_model_config(num_classes=7, cfg_options={"test_cfg.rcnn.max_per_img": 5})
    assert cfg["type"] == "FasterRCNN" and cfg["backbone"]["depth"] == 50
    assert cfg["backbone"]["init_cfg"] is None
    assert cfg["roi_head"]["bbox_head"]["num_classes"] == 7
    assert "num_classes" not in cfg["rpn_head"]
    assert cfg["test_cfg"]["rcnn"]["max_per_img"] == 5
    # The shipped config wants RGB (bgr_to_rgb=True for cv2's BGR); our input is already RGB.
    pre = cfg["data_preprocessor"]
    assert pre["bgr_to_rgb"] is False and pre["rgb_to_bgr"] is False
    assert pre["mean"] == [123.675, 116.28, 103.53]


def test_pretrained_flag_and_nested_options():
    # Only the config is built: pretrained=True keeps the download instruction, it does not download.
    cfg = build_model_config(pretrained=True, cfg_options={"backbone": {"norm_eval": False}})
    assert cfg["backbone"]["init_cfg"] == {"type": "Pretrained", "checkpoint": "torchvision://resnet50"}
    # Nested options merge into the config's dicts (as Hydra YAML gives them) instead of replacing them.
    assert cfg["backbone"]["norm_eval"] is False and cfg["backbone"]["depth"] == 50


def test_train_step_gives_finite_losses_and_head_gradients():
    model = make_model(small=False)  # the shipped R50-FPN
    model.train()
    images, targets = two_images()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()

    det = model.detector
    checked = 0
    for prefix in ("neck", "rpn_head", "roi_head"):
        for name, p in getattr(det, prefix).named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{prefix}.{name} got no gradient"
                assert torch.isfinite(p.grad).all(), f"{prefix}.{name}"
                checked += 1
        grads = [p.grad.abs().sum() for p in getattr(det, prefix).parameters() if p.grad is not None]
        assert sum(grads) > 0, f"{prefix}: all gradients are zero"
    assert checked > 10
    # The frozen stem (frozen_stages=1) stays frozen.
    assert all(not p.requires_grad for p in det.backbone.conv1.parameters())


def test_labels_are_shifted_to_mmdet_and_back(monkeypatch):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    model = make_model()
    images, targets = two_images()

    seen = {}
    real_loss = model.detector.loss

    def spy_loss(inputs, data_samples):
        seen["labels"] = [s.gt_instances.labels.tolist() for s in data_samples]
        seen["bboxes"] = [s.gt_instances.bboxes.clone() for s in data_samples]
        seen["meta"] = [s.metainfo for s in data_samples]
        return real_loss(inputs, data_samples)

    monkeypatch.setattr(model.detector, "loss", spy_loss)
    model.train()
    model(images, targets)
    assert seen["labels"] == [[0, 1], [2]]  # torchvision 1..C -> mmdet 0..C-1
    assert torch.equal(seen["bboxes"][0], targets[0]["boxes"])
    meta = seen["meta"][1]
    assert meta["img_shape"] == meta["ori_shape"] == (96, 128)
    assert meta["scale_factor"] == (1.0, 1.0)
    # Each image padded to a multiple of 32, the batch to the largest of them.
    assert meta["pad_shape"] == (96, 128)
    assert seen["meta"][0]["pad_shape"] == (128, 160)
    assert meta["batch_input_shape"] == seen["meta"][0]["batch_input_shape"] == (128, 160)

    def fake_predict(inputs, data_samples, rescale=True):
        for s in data_samples:
            s.pred_instances = InstanceData(
                bboxes=torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]),
                scores=torch.tensor([0.9, 0.8]),
                labels=torch.tensor([0, NUM_CLASSES - 1]),
            )
        assert all(isinstance(s, DetDataSample) for s in data_samples)
        return data_samples

    monkeypatch.setattr(model.detector, "predict", fake_predict)
    model.eval()
    out = model(images)
    assert [o["labels"].tolist() for o in out] == [[1, NUM_CLASSES]] * 2  # mmdet -> torchvision


def test_eval_returns_torchvision_detections_in_image_coordinates():
    model = make_model(**{"test_cfg.rcnn.score_thr": 0.0, "test_cfg.rcnn.max_per_img": 20})
    model.eval()
    images, _ = two_images()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for img, det in zip(images, out):
        assert set(det) == {"boxes", "scores", "labels"}
        k = det["boxes"].shape[0]
        assert 0 < k <= 20
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape == (k, 4)
        assert det["scores"].shape == (k,) and det["labels"].shape == (k,)
        assert det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 1 and det["labels"].max() <= NUM_CLASSES
        h, w = img.shape[-2:]
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()  # clipped to this image, not the pad
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()


def test_bad_targets_raise_clear_errors():
    model = make_model()
    model.train()
    images, targets = two_images()
    with pytest.raises(ValueError, match="targets are required"):
        model(images)
    bad = [dict(t) for t in targets]
    bad[1]["labels"] = torch.tensor([0])  # background is not a valid target label
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\].*1\.\.3"):
        model(images, bad)
    bad[1]["labels"] = torch.tensor([NUM_CLASSES + 1])
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        model(images, bad)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model([images[0].mul(255).to(torch.uint8)], targets[:1])


def iou(a, b):
    lt = torch.max(a[:2], b[:2])
    rb = torch.min(a[2:], b[2:])
    inter = (rb - lt).clamp(min=0).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def test_overfitting_one_box_lowers_the_loss_and_finds_the_box():
    # From scratch (no pretrained backbone) BN must learn too: frozen random BN stats are noisy.
    model = make_model(**{"backbone.norm_eval": False, "backbone.frozen_stages": -1})
    box = (30, 40, 90, 100)
    images = [scene(128, 128, [box], [(1.0, 0.8, 0.0)], seed=3)]
    targets = [{"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([2])}]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    model.train()
    total, cls = [], []
    for _ in range(STEPS):
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        total.append(float(loss.detach()))
        cls.append(float((losses["loss_rpn_cls"] + losses["loss_cls"]).detach()))
    assert all(math.isfinite(v) for v in total)
    # The R-CNN box loss grows while the RPN starts to find positives, so compare averages.
    assert np.mean(total[-5:]) < 0.7 * total[0], total
    assert np.mean(cls[-5:]) < 0.5 * cls[0], cls

    model.eval()
    with torch.no_grad():
        det = model(images)[0]
    top = det["scores"].argmax()
    assert det["labels"][top] == 2  # the trained class comes back in torchvision numbering
    assert iou(det["boxes"][top], targets[0]["boxes"][0]) > 0.5


def _mmengine_style_checkpoint(model):
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("test_mmdet_adapter")
    hub.update_scalar("train/loss", 1.25)
    return {
        "meta": {"epoch": np.int64(3), "seed": np.array([1, 2, 3]), "mmdet_version": mmdet.__version__},
        "state_dict": model.detector.state_dict(),
        "message_hub": hub.state_dict(),  # HistoryBuffer objects, as mmengine's Runner saves
    }


def test_checkpoint_round_trip_through_the_weights_only_guard(tmp_path):
    src = make_model(seed=1)
    path = tmp_path / "epoch_3.pth"
    torch.save(_mmengine_style_checkpoint(src), path)

    # The problem being handled: torch's default weights-only load refuses this file.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    dst = make_model(seed=2)
    with pytest.raises(RuntimeError, match="trusted=True"):
        load_mmdet_checkpoint(path, dst)

    result = load_mmdet_checkpoint(path, dst, trusted=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k

    images, _ = two_images()
    src.eval()
    dst.eval()
    with torch.no_grad():
        out_src, out_dst = src(images), dst(images)
    for a, b in zip(out_src, out_dst):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


def test_plain_and_lightning_state_dicts_load_without_trust(tmp_path):
    src = make_model(seed=1)
    plain = tmp_path / "adapter.pt"
    torch.save(src.state_dict(), plain)  # keys "detector.*": tensors only, weights-only is fine
    dst = make_model(seed=2)
    load_mmdet_checkpoint(plain, dst)
    assert torch.equal(dst.detector.rpn_head.rpn_cls.weight, src.detector.rpn_head.rpn_cls.weight)

    lightning = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}, "epoch": 1}, lightning)
    dst = make_model(seed=3)
    load_mmdet_checkpoint(lightning, dst, prefix="net.")
    assert torch.equal(dst.detector.roi_head.bbox_head.fc_cls.weight, src.detector.roi_head.bbox_head.fc_cls.weight)

    with pytest.raises(FileNotFoundError):
        load_mmdet_checkpoint(tmp_path / "missing.pth", dst)
    with pytest.raises(ValueError, match="local"):
        load_mmdet_checkpoint("https://example.com/x.pth", dst)
