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
