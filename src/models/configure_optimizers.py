"""The body of `configure_optimizers`: completing the optimizer/scheduler partials from config (conf/optimizer,
conf/scheduler) with the parameters or parameter groups, and the backbone/head groups."""

from __future__ import annotations

from typing import Callable, Iterable

import lightning as L


def configure(module: L.LightningModule, optimizer: Callable, scheduler: Callable | None,
              params: Iterable | None = None) -> dict:
    """`optimizer(params)` and `scheduler(optimizer, total_steps=...)` stepped every optimizer step.
    `params` may be parameter groups (e.g. different learning rates for backbone and head)."""
    opt = optimizer(params if params is not None else [p for p in module.parameters() if p.requires_grad])
    if scheduler is None:
        return {"optimizer": opt}
    total = module.trainer.estimated_stepping_batches
    sched = scheduler(opt, total_steps=total)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def backbone_and_head_groups(module: L.LightningModule, base_lr: float, backbone_lr_mult: float) -> list[dict]:
    """Two parameter groups: every parameter of `module.net.backbone` at `base_lr * backbone_lr_mult` (frozen
    or not: BackboneWarmup may freeze it for the first epochs only), and the rest that trains at `base_lr`."""
    backbone = list(module.net.backbone.parameters())
    backbone_ids = {id(p) for p in backbone}
    head = [p for p in module.parameters() if p.requires_grad and id(p) not in backbone_ids]
    return [{"params": backbone, "lr": base_lr * backbone_lr_mult, "name": "backbone"},
            {"params": head, "lr": base_lr, "name": "head"}]
