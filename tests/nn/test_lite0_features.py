"""EfficientNet-Lite0 as a detection body: the stage outputs it returns are the full network's activations
(the last one, through the ImageNet head, gives exactly the classifier's feature map)."""

import pytest
import torch

from src.nn.pretrained import EfficientNetLiteFeatures, efficientnet_lite_backbone


def test_stage_outputs_are_the_networks_activations():
    torch.manual_seed(0)
    full = efficientnet_lite_backbone(pretrained=True).eval()
    body = EfficientNetLiteFeatures(out_indices=(1, 2, 3, 4), pretrained=True).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        feats = body(x)
        head = full.act(full.bn1(full.conv_head(feats[-1])))
        expected = full.forward_features(x)
    assert [f.shape[1] for f in feats] == body.feature_info.channels() == [24, 40, 112, 320]
    assert [96 // f.shape[2] for f in feats] == body.feature_info.reduction() == [4, 8, 16, 32]
    torch.testing.assert_close(head, expected, atol=1e-5, rtol=1e-5)  # same float32 ops in the same order


def test_bad_out_indices_fail_clearly():
    with pytest.raises(ValueError, match="out_indices"):
        EfficientNetLiteFeatures(out_indices=(5,), pretrained=False)


def test_onnx_export_is_right_at_other_input_sizes(tmp_path):
    """Exported at one size, the body gives the eager stage outputs at others, odd sizes included. The
    package's TF-"SAME" padding took its output size from math.ceil, a constant to the tracer: exported at
    96x128, a 64x96 input came back with 96x128-sized features (src.nn.pretrained.TraceableSamePadConv2d)."""
    import onnxruntime as ort

    from src.inference.onnx import _export
    from src.nn.pretrained import TraceableSamePadConv2d

    torch.manual_seed(0)
    body = EfficientNetLiteFeatures(out_indices=(2, 3, 4), pretrained=False).eval()
    assert any(isinstance(m, TraceableSamePadConv2d) for m in body.modules())
    path = _export(body, (torch.rand(1, 3, 96, 128),), tmp_path / "body.onnx", input_names=["x"],
                   output_names=["p3", "p4", "p5"], dynamic_axes={"x": {2: "h", 3: "w"}}, opset=17)
    # One Conv(auto_pad=SAME_UPPER) per padded conv, no shape-computed Pad: those Pads (and the layout reorders
    # ONNX Runtime put around them) were ~1/3 of FCOS Lite0's time at 320 px (experiments/detection_latency).
    import onnx

    nodes = onnx.load(str(path)).graph.node
    assert not [n.name for n in nodes if n.op_type == "Pad"]
    same_upper = [n for n in nodes if n.op_type == "Conv"
                  and any(a.name == "auto_pad" and a.s == b"SAME_UPPER" for a in n.attribute)]
    assert len(same_upper) == sum(isinstance(m, TraceableSamePadConv2d) for m in body.modules())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in [(96, 128), (64, 96), (75, 101)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            expected = body(x)
        got = session.run(None, {"x": x.numpy()})
        for e, g in zip(expected, got):
            assert tuple(e.shape) == g.shape, (h, w)
            torch.testing.assert_close(torch.from_numpy(g), e, atol=1e-4, rtol=1e-4)
