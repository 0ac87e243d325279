"""TTA and Ensemble return log of averaged probabilities."""

import torch
from torch import nn

from src.nn.tta import TTA, Ensemble


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


class LeftRight(nn.Module):
    """Logit 0 = mean of the left half, logit 1 = mean of the right half: flips swap them."""

    def forward(self, x):
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)


def test_flip_tta_averages_original_and_flipped_probabilities():
    x = torch.zeros(2, 1, 4, 4)
    x[..., :2] = 3.0
    p = torch.softmax(torch.tensor([3.0, 0.0]), 0)
    expected = torch.log((p + p.flip(0)) / 2)
    out = TTA(LeftRight(), hflip=True, scales=(1.0, 0.5))(x)
    assert torch.allclose(out, expected.expand(2, -1), atol=1e-5)


def test_ensemble_weighted_mean_of_probabilities():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    out = Ensemble([Fixed(a), Fixed(b)], weights=[3, 1])(torch.zeros(1, 3, 2, 2))
    expected = torch.log(0.75 * torch.softmax(a, -1) + 0.25 * torch.softmax(b, -1))
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(Ensemble([Fixed(a)])(torch.zeros(1, 3, 2, 2)), torch.log_softmax(a, -1), atol=1e-6)
