import pytest
import timm
import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torch import nn

from src.models.embedding import EmbeddingSystem
from src.nn.backbones import set_last_stride_one
from src.nn.embedder import EmbeddingNet
from src.nn.gem import GeM
from src.nn.necks import BNNeck


def test_gem_p1_is_average_pooling_and_large_p_approaches_max():
    x = torch.rand(2, 3, 5, 7) + 0.01
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(-2, -1)))
    # Power mean: monotone in p, bounded by max and by max * N^(-1/p) from below.
    p1, p3, p60 = GeM(p=1.0)(x), GeM(p=3.0)(x), GeM(p=60.0)(x)
    mx = x.amax(dim=(-2, -1))
    assert (p1 <= p3).all() and (p3 <= p60).all() and (p60 <= mx + 1e-6).all()
    assert (p60 >= mx * 35 ** (-1 / 60) - 1e-6).all()
    assert GeM().p.requires_grad and GeM().p.item() == pytest.approx(3.0)


def _net(name="resnet18", dim=32, **kw):
    # zero_init_last=False: timm zero-inits each block's last BN gamma, which (correctly) blocks the gradient
    # of the residual branches at step 0 and would hide a real "parameter gets no gradient" bug.
    backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", zero_init_last=False)
    return EmbeddingNet(backbone, embedding_dim=dim, **kw)


def test_embeddings_are_l2_normalised_with_configured_dim():
    net = _net().eval()
    emb = net(torch.randn(3, 3, 64, 48))
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("name", ["resnet18", "lcnet_050"])
def test_last_stride_one_doubles_final_feature_map(name):
    a = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
    b = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
    assert set_last_stride_one(b) >= 1
    x = torch.randn(1, 3, 128, 128)
    fa, fb = a.forward_features(x), b.forward_features(x)
    assert fb.shape[-1] == 2 * fa.shape[-1] and fb.shape[-2] == 2 * fa.shape[-2]


def test_bnneck_bias_frozen():
    neck = BNNeck(16, 8)
    assert not neck.bn.bias.requires_grad and neck.fc.bias is None


def test_every_parameter_gets_a_gradient_and_margin_weights_in_state_dict():
    net = _net(dim=16)
    system = EmbeddingSystem(net, {"arcface": ArcFaceLoss(num_classes=4, embedding_size=16)},
                             optimizer=torch.optim.SGD)
    images, labels = torch.randn(8, 3, 64, 64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    parts = system.compute_losses(nn.functional.normalize(net.embed_raw(images), dim=-1), labels)
    parts["loss"].backward()
    missing = [n for n, p in system.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in system.parameters() if p.grad is not None)
    assert "losses.arcface.W" in system.state_dict()
    assert any(p is system.losses["arcface"].W for p in system.parameters())


def test_unknown_loss_weight_is_an_error():
    with pytest.raises(KeyError, match="unknown losses"):
        EmbeddingSystem(_net(), {"arcface": ArcFaceLoss(num_classes=2, embedding_size=32)}, torch.optim.SGD,
                        loss_weights={"arcfcae": 1.0})


def _saved_bytes_and_grads(net, x, target):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = (net(x) * target).sum()
    loss.backward()
    return sum(saved), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_grad_checkpointing_keeps_gradients_and_stores_less():
    torch.manual_seed(0)
    plain = _net("resnet18").train()
    ckpt = _net("resnet18", grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, target = torch.randn(4, 3, 64, 64), torch.randn(4, 32)
    plain_bytes, plain_grads = _saved_bytes_and_grads(plain, x, target)
    ckpt_bytes, ckpt_grads = _saved_bytes_and_grads(ckpt, x, target)
    assert plain_grads.keys() == ckpt_grads.keys()
    assert {n for n, _ in plain.backbone.named_parameters(prefix="backbone")} <= plain_grads.keys()
    for name, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
    assert ckpt_bytes < 0.5 * plain_bytes  # activations between blocks only, recomputed in backward


def test_grad_checkpointing_on_a_backbone_without_it_is_a_clear_error():
    class Plain(nn.Module):
        num_features = 8

        def forward_features(self, x):
            return x

    with pytest.raises(ValueError, match="grad_checkpointing"):
        EmbeddingNet(Plain(), embedding_dim=4, grad_checkpointing=True)
