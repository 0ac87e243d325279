"""ClassifierNet (pretrained features -> linear head) and the classifier's backbone learning rate."""

import pytest
import torch
from torch import nn

from src.models.classifier import ClassificationSystem
from src.nn.classifier_net import ClassifierNet


class TinyBackbone(nn.Module):
    """timm contract with the classifier removed: images -> pooled features [B, num_features]."""

    def __init__(self, num_features=8):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, num_features, 3), nn.BatchNorm2d(num_features)
        self.num_features = num_features

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(-2, -1))


def test_logits_are_the_head_over_the_pooled_features():
    net = ClassifierNet(TinyBackbone(), num_classes=5).eval()
    x = torch.randn(2, 3, 12, 12)
    assert net(x).shape == (2, 5)
    torch.testing.assert_close(net(x), net.head(net.features(x)))


def test_freeze_bn_and_frozen_backbone_keep_batchnorm_in_eval_mode():
    net = ClassifierNet(TinyBackbone(), num_classes=3, freeze_bn=True).train()
    assert net.training and not net.backbone.bn.training and net.backbone.conv.weight.requires_grad
    net = ClassifierNet(TinyBackbone(), num_classes=3).train()
    assert net.backbone.bn.training
    net.set_backbone_frozen(True)
    assert not net.backbone.training and not net.backbone.conv.weight.requires_grad and net.head.weight.requires_grad
    net.set_backbone_frozen(False)
    assert net.backbone.bn.training and net.backbone.conv.weight.requires_grad


def test_an_unpooled_backbone_is_one_clear_error():
    net = ClassifierNet(TinyBackbone(), num_classes=3)
    net.backbone.forward = lambda x: torch.zeros(x.shape[0], 8, 2, 2)
    with pytest.raises(ValueError, match="pooled features"):
        net(torch.randn(1, 3, 8, 8))


def test_backbone_learning_rate_is_a_fraction_of_the_heads():
    from functools import partial

    system = ClassificationSystem(ClassifierNet(TinyBackbone(), 3), 3, optimizer=partial(torch.optim.AdamW, lr=1e-3),
                                  scheduler=None, backbone_lr_mult=0.1)
    opt = system.configure_optimizers()["optimizer"]
    lrs = {g["name"]: (g["lr"], sum(p.numel() for p in g["params"])) for g in opt.param_groups}
    n_backbone = sum(p.numel() for p in system.net.backbone.parameters())
    assert lrs["backbone"] == (pytest.approx(1e-4), n_backbone)
    assert lrs["head"] == (pytest.approx(1e-3), sum(p.numel() for p in system.net.head.parameters()))
    with pytest.raises(ValueError, match="model.backbone_lr_mult"):
        ClassificationSystem(nn.Linear(3, 3), 3, optimizer=partial(torch.optim.AdamW), backbone_lr_mult=0.1)
