"""Serving from exported ONNX files: the same embeddings and boxes as eager, galleries shared between the two,
and a checkout through the service that never imports Lightning, Hydra or pytorch-metric-learning."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from src.inference.detector import load_detector
from src.inference.embedder import load_embedder
from src.inference.export import export_checkpoint
from src.inference.settings import sidecar_path
from tests.recognition.helpers import CATALOGUE, counter_photo, studio_shot, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TRAINING_ONLY = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "pytorch_metric_learning")


def write_detector_checkpoint(path: Path, **net_kwargs) -> Path:
    """A DetectionSystem checkpoint as src.train writes it (network under `model.net`, inference settings),
    random weights: a 0.1M-channel Faster R-CNN over a timm ResNet-18."""
    from hydra.utils import instantiate

    from src.inference.checkpoint import CONFIG_KEY, settings_from_config
    from src.inference.settings import CHECKPOINT_KEY

    net_cfg = {"_target_": "src.models.detectors.torchvision_models.fasterrcnn_timm", "backbone_name": "resnet18",
               "num_classes": 2, "out_indices": [2, 3, 4], "fpn_channels": 32, "pretrained": False, **net_kwargs}
    config = {"model": {"_target_": "src.models.detection.DetectionSystem", "net": net_cfg},
              "data": {"eval_size": 96, "max_size": 160},
              "inference": {"detection": {"score_threshold_image": 0.3}}}
    torch.manual_seed(0)
    net = instantiate(net_cfg).eval()
    settings = settings_from_config(config, "detector", [{"id": 7, "name": "product"}])
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, CONFIG_KEY: config,
                CHECKPOINT_KEY: settings.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx_serving")
    emb_ckpt = write_tiny_checkpoint(tmp / "emb.ckpt", tmp, gallery_views=["soften"])
    det_ckpt = write_detector_checkpoint(tmp / "det.ckpt")
    emb = export_checkpoint(emb_ckpt, tmp / "emb.onnx")
    det = export_checkpoint(det_ckpt, tmp / "det.onnx")
    return tmp, emb_ckpt, det_ckpt, emb, det


def test_export_refuses_an_example_it_finds_nothing_in(tmp_path):
    """Traced on an image without a box, torchvision's Faster R-CNN records its no-proposal path and the file
    fails on every real photo (seen with a trained counter detector on random pixels): refused, nothing written.
    An example photo is resized as served and traced on."""
    ckpt = write_detector_checkpoint(tmp_path / "none.ckpt", box_score_thresh=1.0)  # no box can pass
    with pytest.raises(ValueError, match="finds no box on the export example"):
        export_checkpoint(ckpt, tmp_path / "none.onnx")
    assert not (tmp_path / "none.onnx").exists()
    ckpt = write_detector_checkpoint(tmp_path / "det.ckpt")
    report = export_checkpoint(ckpt, tmp_path / "det.onnx", example_image=counter_photo(CATALOGUE[:3])[0])
    assert report["eager_boxes"] == report["onnx_boxes"] > 0 and report["max_box_diff"] < 1e-2


def test_export_writes_settings_and_matches_eager(exported):
    tmp, emb_ckpt, det_ckpt, emb, det = exported
    assert (emb["kind"], det["kind"]) == ("embedder", "detector")
    assert Path(emb["settings"]) == sidecar_path(tmp / "emb.onnx") and Path(det["settings"]).is_file()
    assert emb["max_abs_diff"] < 1e-4
    assert det["eager_boxes"] == det["onnx_boxes"] > 0 and det["max_box_diff"] < 1e-2


def test_onnx_embedder_equals_eager_and_shares_its_galleries(exported):
    tmp, emb_ckpt, *_ = exported
    eager, ort = load_embedder(emb_ckpt), load_embedder(tmp / "emb.onnx", threads=1)
    assert ort.fingerprint == eager.fingerprint  # a gallery built with one is searched with the other
    assert ort.gallery_views == eager.gallery_views == ("soften",)
    crops = [studio_shot(s) for s in CATALOGUE[:4]]
    np.testing.assert_allclose(ort.embed(crops), eager.embed(crops), atol=1e-4)
    np.testing.assert_allclose(ort.embed_gallery(crops), eager.embed_gallery(crops), atol=1e-4)


def test_onnx_detector_equals_eager(exported):
    tmp, _, det_ckpt, *_ = exported
    eager, ort = load_detector(det_ckpt, score_threshold=0.0), load_detector(tmp / "det.onnx", score_threshold=0.0)
    assert (ort.eval_size, ort.max_size, ort.detection) == (96, 160, {"score_threshold_image": 0.3})
    assert ort.categories == eager.categories == [{"id": 7, "name": "product"}]
    image, _, _ = counter_photo(list(CATALOGUE[:3]))
    a, b = eager.detect(image), ort.detect(image)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(b.boxes, a.boxes, atol=0.05)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)


def test_a_kind_mismatch_is_one_clear_error(exported):
    tmp, emb_ckpt, det_ckpt, *_ = exported
    with pytest.raises(ValueError, match="holds a detector, not an embedder"):
        load_embedder(tmp / "det.onnx")
    with pytest.raises(ValueError, match="holds a detector, not an embedder"):
        load_embedder(det_ckpt)
    (tmp / "lost.onnx").write_bytes((tmp / "emb.onnx").read_bytes())
    with pytest.raises(FileNotFoundError, match="lost.inference.json"):
        load_embedder(tmp / "lost.onnx")


def test_a_typo_in_the_settings_file_is_named(exported, tmp_path):
    tmp = exported[0]
    data = json.loads(sidecar_path(tmp / "emb.onnx").read_text())
    (tmp_path / "m.onnx").write_bytes((tmp / "emb.onnx").read_bytes())
    sidecar_path(tmp_path / "m.onnx").write_text(json.dumps({**data, "galery_views": []}))
    with pytest.raises(ValueError, match=r"m\.inference\.json: unknown inference key\(s\) \['galery_views'\]"):
        load_embedder(tmp_path / "m.onnx")


def test_the_service_serves_onnx_files_without_training_code(exported):
    """In a fresh interpreter: the service built from the two ONNX files adds a product and prices a counter
    photo, and Lightning, Hydra, OmegaConf and pytorch-metric-learning are never imported."""
    tmp = exported[0]
    script = textwrap.dedent(f"""
        import io, json, sys
        import numpy as np
        from PIL import Image
        from fastapi.testclient import TestClient
        from src.service.__main__ import build_app
        from src.service.auth import AdminKeys
        from tests.recognition.helpers import CATALOGUE, counter_photo, studio_shot

        def png(a):
            buf = io.BytesIO(); Image.fromarray(a).save(buf, format="PNG"); return buf.getvalue()

        key = "onnx-serving-key-0123456789"
        app = build_app({str(tmp / 'gallery')!r}, {str(tmp / 'emb.onnx')!r}, {str(tmp / 'det.onnx')!r},
                        det_threshold=0.0, admin_keys=AdminKeys.of({{"t": key}}), threads=1)
        with TestClient(app) as client:
            sku = CATALOGUE[0]
            added = client.post("/gallery", headers={{"Authorization": "Bearer " + key}},
                                data={{"sku": str(sku.sku_id), "price": 1.5}},
                                files=[("image", ("a.png", png(studio_shot(sku)), "image/png"))])
            photo, _, _ = counter_photo(list(CATALOGUE[:2]))
            receipt = client.post("/checkout", files={{"image": ("c.png", png(photo), "image/png")}})
        print(json.dumps({{"add": added.status_code, "checkout": receipt.status_code,
                          "loaded": sorted(m for m in {TRAINING_ONLY!r} if m in sys.modules)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"add": 200, "checkout": 200, "loaded": []}
