"""SmallCNN: shapes at 28 and 32 px, the timm-style feature contract, and every parameter receives a gradient."""

import pytest
import torch

from src.nn.small_cnn import SmallCNN


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("size", [28, 32])
def test_logits_shape_and_every_parameter_gets_a_gradient(residual, size):
    torch.manual_seed(0)
    net = SmallCNN(num_classes=10, widths=(8, 16, 32), depth=2, residual=residual, drop_rate=0.1)
    logits = net(torch.randn(4, 3, size, size))
    assert logits.shape == (4, 10)
    logits.logsumexp(1).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_full_resolution_first_stage_and_feature_contract():
    net = SmallCNN(num_classes=0, in_chans=1, widths=(8, 16), depth=1).eval()
    x = torch.randn(2, 1, 28, 28)
    assert net.forward_features(x).shape == (2, 16, 14, 14)  # one 2x2 pool between the two stages only
    assert net(x).shape == (2, net.num_features) == (2, 16)


def test_residual_skip_is_identity_when_the_branch_is_zero():
    net = SmallCNN(num_classes=3, widths=(4,), depth=2, residual=True).eval()
    stage = net.features[0]
    torch.nn.init.zeros_(stage[1][1].weight)  # BN gamma of the branch -> branch output 0 before ReLU
    torch.nn.init.zeros_(stage[1][1].bias)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(stage(x), stage[0](x))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        SmallCNN(widths=())
    with pytest.raises(ValueError):
        SmallCNN(depth=0)
