"""KD loss: equals a direct KL computation with T^2 scaling; zero when student equals teacher."""

import pytest
import torch

from src.losses.distillation import kd_kl_div


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_equals_direct_kl(t):
    torch.manual_seed(1)
    s, te = torch.randn(5, 7), torch.randn(5, 7)
    p_t = torch.softmax(te / t, -1)
    p_s = torch.softmax(s / t, -1)
    direct = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * t * t
    assert kd_kl_div(s, te, t).item() == pytest.approx(direct.item(), rel=1e-5)


def test_zero_for_identical_and_positive_otherwise():
    x = torch.randn(3, 4)
    assert kd_kl_div(x, x, 2.0).abs().item() < 1e-6
    assert kd_kl_div(x, -x, 2.0).item() > 0
    with pytest.raises(ValueError):
        kd_kl_div(x, x, 0.0)
