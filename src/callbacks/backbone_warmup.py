"""Head warm-up before fine-tuning: the backbone stays frozen (and in eval mode, so its BatchNorm statistics do
not move) for the first `epochs` epochs, which makes them a linear probe on the pretrained features; then the
whole network trains, the backbone at its own (lower) learning rate from the optimizer's parameter groups."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


class BackboneWarmup(L.Callback):
    """Needs `pl_module.net.set_backbone_frozen(bool)` (EmbeddingNet, ClassifierNet). The backbone's parameters
    stay in the optimizer throughout; frozen ones simply get no gradient, so the schedule is not rebuilt."""

    def __init__(self, epochs: int = 1) -> None:
        if epochs < 0:
            raise ValueError(f"BackboneWarmup epochs must be >= 0, got {epochs}")
        self.epochs = int(epochs)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        frozen = trainer.current_epoch < self.epochs
        if frozen != pl_module.net.backbone_frozen:
            log.info("epoch %d: backbone %s", trainer.current_epoch, "frozen (head warm-up)" if frozen else "unfrozen")
        pl_module.net.set_backbone_frozen(frozen)

    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.net.set_backbone_frozen(False)
