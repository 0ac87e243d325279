"""Fine-tuning starts at the pretrained model: the identity neck + GeM(p=1) embed exactly the mean-pooled
backbone features; the orthogonal neck keeps inner products in its row space; a frozen backbone gets no
gradient and keeps its BatchNorm statistics."""

import functools

import pytest
import timm
import torch
from torch.nn import functional as F

from src.nn.embedder import EmbeddingNet
from src.nn.gem import GeM
from src.nn.necks import LinearNeck


def _backbone():
    return timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")


def _net(**kw):
    return EmbeddingNet(_backbone(), embedding_dim=512, pool=GeM(p=1.0),
                        neck=functools.partial(LinearNeck, init="identity"), **kw)


def test_untrained_model_embeds_the_plain_pooled_features():
    net = _net().eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        plain = F.normalize(net.backbone.forward_features(x).mean(dim=(-2, -1)), dim=1)
        ours = net(x)
    # GeM clamps activations at 1e-6 before pooling; ReLU features are >= 0, so only float rounding differs.
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)


def test_orthogonal_neck_is_semi_orthogonal_and_identity_neck_checks_its_size():
    neck = LinearNeck(64, 16, init="orthogonal")
    w = neck.fc.weight
    torch.testing.assert_close(w @ w.T, torch.eye(16), atol=1e-5, rtol=0)
    x = torch.randn(5, 16) @ w  # vectors in the row space keep their inner products
    torch.testing.assert_close(neck(x) @ neck(x).T, x @ x.T, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="dim == in_features"):
        LinearNeck(64, 16, init="identity")
    with pytest.raises(ValueError, match="dim <= in_features"):
        LinearNeck(16, 64, init="orthogonal")


def test_frozen_backbone_gets_no_gradient_and_keeps_its_statistics():
    net = _net()
    net.set_backbone_frozen(True)
    net.train()
    assert not net.backbone.training and net.neck.training
    bn = net.backbone.bn1
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.neck.fc.weight.grad is not None
    torch.testing.assert_close(bn.running_mean, before, atol=0, rtol=0)  # eval mode: not updated at all
    net.set_backbone_frozen(False)
    assert net.backbone.training and all(p.requires_grad for p in net.backbone.parameters())


def test_freeze_bn_keeps_running_statistics_while_weights_train():
    net = _net(freeze_bn=True).train()
    bn = net.backbone.bn1
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, 64, 64)).sum().backward()
    torch.testing.assert_close(bn.running_mean, before, atol=0, rtol=0)
    assert not bn.training and bn.weight.grad is not None and net.backbone.conv1.weight.grad is not None


def test_fixed_neck_is_not_trained_and_not_in_the_optimizer():
    # `trainable: false` (conf/model/embedding_lite0.yaml): the map the run starts from stays as it is.
    from pytorch_metric_learning.losses import ArcFaceLoss

    from src.models.embedding import EmbeddingSystem

    net = EmbeddingNet(_backbone(), embedding_dim=512, pool=GeM(p=1.0),
                       neck=functools.partial(LinearNeck, init="identity", trainable=False))
    assert not net.neck.fc.weight.requires_grad
    system = EmbeddingSystem(net, {"arcface": ArcFaceLoss(num_classes=3, embedding_size=512)},
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    opt = system.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(net.neck.fc.weight) not in ids and id(net.pool.p) in ids
