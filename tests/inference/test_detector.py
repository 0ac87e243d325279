"""Detector adapters: resize as the training data did, boxes back in the caller's pixels; whole image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from src.inference.detector import Detector, WholeImageDetector, load_detector


class EchoDetector(nn.Module):
    """torchvision contract; reports the full extent of the tensor it received and a fixed small box."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        self.seen.append([tuple(im.shape) for im in images])
        out = []
        for im in images:
            h, w = im.shape[-2:]
            out.append({"boxes": torch.tensor([[10.0, 10, 20, 20], [0, 0, w, h]]),
                        "scores": torch.tensor([0.3, 0.9]), "labels": torch.tensor([1, 1])})
        return out


def test_boxes_come_back_in_original_pixels():
    model = EchoDetector()
    det = Detector(model, eval_size=120, max_size=None, score_threshold=0.5)
    img = np.zeros((240, 320, 3), np.uint8)
    d = det.detect(img)
    assert model.seen == [[(3, 120, 160)]]  # shorter side to eval_size, aspect kept
    assert len(d) == 1 and d.scores.tolist() == [pytest.approx(0.9)]
    np.testing.assert_allclose(d.boxes, [[0, 0, 320, 240]], atol=1e-4)
    d0 = Detector(model, eval_size=120, score_threshold=0.0).detect(img)
    assert d0.scores.tolist() == pytest.approx([0.9, 0.3])  # best first
    np.testing.assert_allclose(d0.boxes[1], [20, 20, 40, 40], atol=1e-4)  # x2: 120 -> 240


def test_max_size_caps_the_long_side_and_batches():
    model = EchoDetector()
    det = Detector(model, eval_size=200, max_size=250, score_threshold=0.5, batch_size=2)
    out = det.detect_batch([np.zeros((100, 400, 3), np.uint8)] * 3)
    assert model.seen[0] == [(3, 62, 250)] * 2 and model.seen[1] == [(3, 62, 250)]
    np.testing.assert_allclose(out[2].boxes, [[0, 0, 400, 100]], rtol=0.02)


def test_whole_image_detector():
    d = WholeImageDetector().detect(np.zeros((30, 50, 3), np.uint8))
    assert d.boxes.tolist() == [[0, 0, 50, 30]] and d.scores.tolist() == [1.0]
    with pytest.raises(ValueError, match="RGB uint8"):
        WholeImageDetector().detect(np.zeros((30, 50), np.uint8))


def test_from_checkpoint_reads_eval_size(tmp_path):
    """A DetectionSystem checkpoint as src.train wrote them before the `inference:` node (state_dict +
    hydra_config with a `detect:` recipe, the network under `model.model`): old runs keep serving."""
    from hydra.utils import instantiate

    from src.utils.checkpoint import CONFIG_KEY

    config = {"model": {"_target_": "src.models.detection.DetectionSystem", "class_agnostic": True,
                        "model": {"_target_": "src.models.detectors.torchvision_models.fasterrcnn_timm",
                                  "backbone_name": "resnet18", "num_classes": 2, "out_indices": [2, 3, 4],
                                  "fpn_channels": 32, "pretrained": False},
                        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}},
              "data": {"eval_size": 96, "max_size": 200},
              "detect": {"score_threshold_image": 0.8, "score_threshold_video": 0.97}}  # read by match-live
    torch.manual_seed(0)
    net = instantiate(config["model"]["model"])  # an old DetectionSystem's state_dict: its network under `model.`
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, CONFIG_KEY: config},
               tmp_path / "det.ckpt")
    det = load_detector(tmp_path / "det.ckpt", score_threshold=0.0)
    assert (det.eval_size, det.max_size) == (96, 200)
    assert det.detection == {"score_threshold_image": 0.8, "score_threshold_video": 0.97}
    d = det.detect(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    assert d.boxes.shape[1] == 4 and (d.boxes[:, 2] <= 320).all() and (d.boxes[:, 3] <= 240).all()
    assert (np.diff(d.scores) <= 0).all()
    with pytest.raises(ValueError, match="holds an embedder, not a detector"):
        from tests.recognition.helpers import write_tiny_checkpoint

        load_detector(write_tiny_checkpoint(tmp_path / "emb.ckpt", tmp_path))
