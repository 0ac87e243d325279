"""Conv-BN folding: every BN of timm CNNs (incl. BatchNormAct2d) is folded and logits agree with the original.

Tolerance: folding is exact in real arithmetic; in fp32 it only changes the rounding order. So the fused model
must be as close to the float64 ground truth as the unfused fp32 model is. We require
max|fused - eager| <= 8 * max|eager_fp32 - eager_fp64| + 1e-6 (measured: fused and eager both ~1e-6 from fp64 on
logits of magnitude ~2, ratios 1.1-2.2; a wrong fold gives errors of order 1e-1..1e0)."""

import pytest
import timm
import torch
from torch import nn

from src.nn.fuse import find_conv_bn_pairs, fuse_conv_bn
from tests.bn_helpers import randomize_bn


def count_bn(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "resnet18"])
def test_fused_timm_model_matches_original(name):
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model(name, num_classes=7))
    x = torch.randn(3, 3, 64, 64)
    fused, pairs = fuse_conv_bn(model, x[:1])
    assert count_bn(model) > 0 and count_bn(fused) == 0 and len(pairs) == count_bn(model)
    with torch.no_grad():
        eager, out = model(x), fused(x)
        reference = model.double()(x.double())
    rounding = (eager.double() - reference).abs().max().item()
    assert (out - eager).abs().max().item() <= 8 * rounding + 1e-6
    assert count_bn(model) > 0  # the original is untouched (a copy was fused)


class SharedConvOutput(nn.Module):
    """The conv output feeds both the BN and a skip connection: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y
        return self.bn2(self.conv2(z)).mean((2, 3))


def test_conv_with_second_consumer_is_not_fused():
    model = randomize_bn(SharedConvOutput())
    x = torch.randn(2, 3, 8, 8)
    pairs = find_conv_bn_pairs(model, x)
    assert [(p.conv, p.bn) for p in pairs] == [("conv2", "bn2")]
    fused, _ = fuse_conv_bn(model, x)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-5)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(SharedConvOutput().train(), torch.randn(1, 3, 8, 8))
