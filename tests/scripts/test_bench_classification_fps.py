"""scripts/bench_classification_fps.py builds the nets the accuracy-vs-FPS table reports: an experiment's
model.net (the Fashion-MNIST SmallCNN, the Lite0 classifier) at its own image size, and what it times as ONNX
Runtime computes the same logits (Lite0's TF-"SAME" padding is computed from the input size at export)."""


import numpy as np
import pytest
import torch
from tests.script_loader import load_script


def script():
    return load_script("bench_classification_fps")


def test_experiment_nets_are_built_at_their_image_size():
    bench = script()
    net, size = bench.experiment_net("cnn_fashion_mnist", [])
    assert type(net).__name__ == "SmallCNN" and size == 28
    net, size = bench.experiment_net("lite0_style", ["model.net.backbone.pretrained=false"])
    assert type(net).__name__ == "ClassifierNet" and size == 96 and net.head.out_features == 7
    with pytest.raises(ValueError, match="data.num_classes"):
        bench.experiment_net("lite0_classifier", ["model.net.backbone.pretrained=false"])


def test_table_row_for_an_experiment(tmp_path):
    rows = script().main(["--experiments", "cnn_fashion_mnist", "--batch-sizes", "1", "--min-seconds", "0.01",
                          "--threads", "1", "--json", str(tmp_path / "fps.json")])
    (row,) = rows
    assert row["net"] == "SmallCNN" and row["image_size"] == 28 and row["bn_folded"] > 0
    assert set(row["fps"]) == {"eager@1", "fused@1", "onnxruntime@1"} and min(row["fps"].values()) > 0


def test_lite0_classifier_onnx_matches_eager(tmp_path):
    from src.inference.onnx import OrtModel, export_onnx
    from src.nn.fuse import fuse_conv_bn

    net, _ = script().experiment_net("lite0_style", ["model.net.backbone.pretrained=true"])
    net.eval()
    x = torch.randn(3, 3, 64, 64)
    fused, pairs = fuse_conv_bn(net, x[:1])
    assert len(pairs) > 40  # every conv -> BN of the Lite0 blocks
    ort = OrtModel(export_onnx(fused, tmp_path / "lite0.onnx", 64), threads=1)
    with torch.no_grad():
        eager = net(x).numpy()
    # Folding BN and ORT's kernels reorder float32 sums: agreement to ~1e-4 of logits of order 1-10.
    np.testing.assert_allclose(ort(x), eager, atol=2e-3, rtol=1e-3)
