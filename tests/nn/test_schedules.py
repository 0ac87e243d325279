"""LR schedules (conf/scheduler), step by step: warmup_step is torch's LinearLR -> MultiStepLR; warmup_cosine
equals torch's LinearLR -> CosineAnnealingLR for one learning rate, and unlike it ends every parameter group at
`min_lr_ratio` of its own rate (CosineAnnealingLR's eta_min is one absolute value for all groups)."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR

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


def _torch_warmup_step(opt, total, milestones_ratio, gamma, warmup_steps):
    milestones = [int(r * total) for r in milestones_ratio]
    if warmup_steps == 0:
        return MultiStepLR(opt, milestones, gamma)
    return SequentialLR(opt, [LinearLR(opt, 1 / (warmup_steps + 1), 1.0, warmup_steps),
                              MultiStepLR(opt, [max(0, m - warmup_steps) for m in milestones], gamma)],
                        [warmup_steps])


@pytest.mark.parametrize("total, ratios, gamma, warm", [(100, (0.6, 0.85), 0.1, 0), (100, (0.6, 0.85), 0.1, 7),
                                                         (37, (0.3, 0.3, 0.9), 0.5, 3), (50, (0.1, 0.7), 0.2, 10),
                                                         (1, (0.6, 0.85), 0.1, 0)])
def test_warmup_step_equals_torch_linear_then_multistep(total, ratios, gamma, warm):
    ours = _curve(lambda o: warmup_step(o, total, ratios, gamma, warm), [1e-4, 1e-3], total + 3)
    lib = _curve(lambda o: _torch_warmup_step(o, total, ratios, gamma, warm), [1e-4, 1e-3], total + 3)
    torch.testing.assert_close(ours, lib, rtol=1e-12, atol=0)
