"""FocalLoss: gamma=0 is cross-entropy (hard, soft, smoothed); known answer for gamma>0."""

import math

import pytest
import torch
import torch.nn.functional as F

from src.losses.focal import FocalLoss


def test_gamma_zero_equals_cross_entropy_hard_soft_and_smoothed():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    soft = torch.softmax(torch.randn(6, 5), -1)
    assert torch.allclose(FocalLoss(gamma=0)(logits, y), F.cross_entropy(logits, y), atol=1e-6)
    assert torch.allclose(FocalLoss(gamma=0)(logits, soft), F.cross_entropy(logits, soft), atol=1e-6)
    assert torch.allclose(FocalLoss(gamma=0, label_smoothing=0.1)(logits, y),
                          F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6)


def test_known_answer_two_classes():
    # p(true) = sigmoid(2) for logits [2, 0]; loss = -(1 - p)^2 * log p
    p = 1 / (1 + math.exp(-2))
    expected = -((1 - p) ** 2) * math.log(p)
    got = FocalLoss(gamma=2)(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_alpha_weights_and_bad_inputs():
    logits, y = torch.tensor([[0.0, 1.0]]), torch.tensor([1])
    base = FocalLoss(gamma=1)(logits, y)
    assert FocalLoss(gamma=1, alpha=[1.0, 0.5])(logits, y).item() == pytest.approx(0.5 * base.item(), rel=1e-6)
    with pytest.raises(ValueError, match="soft target shape"):
        FocalLoss()(logits, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)
