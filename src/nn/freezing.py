"""Backbone freezing shared by the fine-tuning networks (EmbeddingNet, ClassifierNet)."""

from __future__ import annotations

from torch import nn


class BackboneFreezing(nn.Module):
    """For a module with a `backbone`: `set_backbone_frozen` (head warm-up: no backbone gradients, backbone in
    eval mode) and `freeze_bn` (the backbone's BatchNorm layers stay in eval mode, so their pretrained running
    statistics are kept while their affine weights train). Subclasses set `self.freeze_bn` in `__init__`."""

    freeze_bn: bool = False
    backbone_frozen: bool = False

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Head warm-up: no backbone gradients and the backbone in eval mode (a linear probe on its features)."""
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
        elif mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
