"""LR schedules (conf/scheduler), step by step: warmup_step is torch's LinearLR -> MultiStepLR; warmup_cosine
equals torch's LinearLR -> CosineAnnealingLR for one learning rate, and unlike it ends every parameter group at
`min_lr_ratio` of its own rate (CosineAnnealingLR's eta_min is one absolute value for all groups)."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from src.nn.schedules import warmup_cosine, warmup_step


def _curve(make, lrs, steps):
    """Each group's lr before each of `steps` optimizer steps: [steps, groups] float64."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    sched, out = make(opt), []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


def _step_factor(step, total, milestones_ratio, gamma, warmup_steps):
    """By hand: linear warmup (step + 1) / (warmup + 1), then gamma ** (milestones passed)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return gamma ** sum(step >= int(r * total) for r in milestones_ratio)


@pytest.mark.parametrize("total, ratios, gamma, warm", [(100, (0.6, 0.85), 0.1, 0), (100, (0.6, 0.85), 0.1, 7),
                                                         (37, (0.3, 0.3, 0.9), 0.5, 3), (50, (0.1, 0.7), 0.2, 10),
                                                         (1, (0.6, 0.85), 0.1, 0)])
def test_warmup_step_is_linear_warmup_then_gamma_at_milestones(total, ratios, gamma, warm):
    lrs = [1e-4, 1e-3]
    ours = _curve(lambda o: warmup_step(o, total, ratios, gamma, warm), lrs, total + 3)
    by_hand = torch.tensor([[lr * _step_factor(s, total, ratios, gamma, warm) for lr in lrs] for s in range(total + 3)],
                           dtype=torch.float64)
    torch.testing.assert_close(ours, by_hand, rtol=1e-12, atol=0)


def _torch_warmup_cosine(opt, total, warm, min_lr_ratio):
    eta_min = min_lr_ratio * opt.param_groups[0]["lr"]  # one absolute value for every group
    return SequentialLR(opt, [LinearLR(opt, 1 / (warm + 1), 1.0, warm), CosineAnnealingLR(opt, total - warm, eta_min)],
                        [warm])


@pytest.mark.parametrize("total", [20, 100, 1000])
def test_warmup_cosine_is_torch_linear_then_cosine_for_one_lr(total):
    warm = int(round(0.05 * total))
    ours = _curve(lambda o: warmup_cosine(o, total, warmup_ratio=0.05), [2e-3], total)
    lib = _curve(lambda o: _torch_warmup_cosine(o, total, warm, 0.01), [2e-3], total)
    torch.testing.assert_close(ours, lib, rtol=1e-12, atol=0)


def test_warmup_cosine_ends_each_group_at_its_own_min_ratio_where_torch_cannot():
    total, lrs = 100, [1e-4, 1e-3]  # backbone at 0.1 x the head's lr
    ours = _curve(lambda o: warmup_cosine(o, total, warmup_steps=5), lrs, total + 1)
    assert ours[0].tolist() == pytest.approx([lr / 6 for lr in lrs], rel=1e-12)
    progress = 50 / 95
    mid = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    assert ours[55].tolist() == pytest.approx([lr * mid for lr in lrs], rel=1e-12)
    assert ours[-1].tolist() == pytest.approx([0.01 * lr for lr in lrs], rel=1e-12)
    lib = _curve(lambda o: _torch_warmup_cosine(o, total, 5, 0.01), lrs, total + 1)
    assert lib[-1, 1].item() == pytest.approx(0.01 * lrs[0])  # the head ends at the backbone's floor, 10x lower
