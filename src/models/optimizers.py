"""Optimizers that torch lacks, from timm's factory, in a form Hydra `_partial_` can complete with the params."""

from __future__ import annotations

from typing import Iterable

import torch


def timm_optimizer(params: Iterable, opt: str = "lookahead_radam", lr: float = 1e-3, weight_decay: float = 0.0,
                   **kwargs) -> torch.optim.Optimizer:
    """`timm.optim.create_optimizer_v2(params, opt, lr, weight_decay, **kwargs)`.
    opt='lookahead_radam' is Ranger (RAdam + Lookahead, k=6, alpha=0.5), the AliProducts winners' optimizer."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(list(params), opt=opt, lr=lr, weight_decay=weight_decay, **kwargs)
