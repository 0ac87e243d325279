"""Learning-rate schedules stepped once per optimizer step (interval='step'), built when the number of steps is
known (`configure_optimizers` passes `total_steps`)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int | None = None,
                  warmup_ratio: float = 0.05, min_lr_ratio: float = 0.01) -> LambdaLR:
    """Linear warmup from ~0 to each group's lr, then cosine decay to `min_lr_ratio` of it at `total_steps`.
    Not torch's CosineAnnealingLR: its eta_min is one absolute lr for all groups, and the backbone/head groups
    (backbone_lr_mult) each end at `min_lr_ratio` of their own lr (tests/nn/test_schedules.py)."""
    total_steps = max(1, int(total_steps))
    warm = int(warmup_steps) if warmup_steps is not None else int(round(warmup_ratio * total_steps))
    warm = min(max(warm, 0), total_steps - 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_step(optimizer: Optimizer, total_steps: int, milestones_ratio: tuple[float, ...] = (0.6, 0.85),
                gamma: float = 0.1, warmup_steps: int = 0) -> LRScheduler:
    """torch's MultiStepLR with milestones at fractions of training, after a LinearLR warmup from lr/(warmup+1)."""
    milestones = [int(r * max(1, int(total_steps))) for r in milestones_ratio]
    if warmup_steps <= 0:
        return MultiStepLR(optimizer, milestones, gamma)
    warmup = LinearLR(optimizer, 1 / (warmup_steps + 1), 1.0, warmup_steps)
    steps = MultiStepLR(optimizer, [max(0, m - warmup_steps) for m in milestones], gamma)  # counted from warmup's end
    return SequentialLR(optimizer, [warmup, steps], [warmup_steps])
