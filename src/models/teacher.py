"""The distillation teacher: a frozen network, loaded from a checkpoint, held outside the student's module tree.
The loss itself is src.losses.distillation."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from src.losses.distillation import check_kd_alpha, distillation_losses
from src.utils.checkpoint import CONFIG_KEY, load_system, read_checkpoint

log = logging.getLogger(__name__)


class FrozenTeacher(nn.Module):
    """No gradients, always in eval mode (BN statistics and dropout fixed), even when the LightningModule that
    uses it calls `.train()`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # a teacher in train mode would update BN running stats on student batches

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def load_teacher(ckpt_path: str | os.PathLike, net: nn.Module | None = None, prefix: str = "net.") -> FrozenTeacher:
    """`ckpt_path` written by src.train (its config rebuilds the system; the teacher is its `net`), or, with
    `net` given (any timm model), a state dict / Lightning checkpoint whose keys may carry `prefix`."""
    path = Path(ckpt_path)
    if net is None:
        ckpt = read_checkpoint(path)
        if CONFIG_KEY not in ckpt:
            raise KeyError(f"{path}: no '{CONFIG_KEY}' in checkpoint; pass `net` to load a plain state dict")
        system, _ = load_system(path)
        return FrozenTeacher(system.net)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"{path}: teacher weights do not fit the net: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return FrozenTeacher(net)


class Distillation:
    """What a student system needs to distil: the teacher (given, or a zero-argument factory built by `build()`
    so loading the student for evaluation never needs the teacher's file) and the loss weights.

    A plain object, not an nn.Module: the teacher is no submodule of the student, so it is in neither the
    student's checkpoint nor its optimizer, and `.to()` / `.train()` of the student leave it alone."""

    def __init__(self, teacher: nn.Module | Callable[[], nn.Module], alpha: float = 0.5,
                 temperature: float = 4.0) -> None:
        self.factory = teacher
        self.teacher = teacher if isinstance(teacher, nn.Module) else None
        self.alpha, self.temperature = check_kd_alpha(alpha), float(temperature)

    def build(self) -> None:
        if self.teacher is None:
            self.teacher = self.factory()
            net = getattr(self.teacher, "net", self.teacher)
            log.info("Distilling from teacher %s (alpha=%.2f, T=%.1f)", type(net).__name__, self.alpha,
                     self.temperature)

    def ready(self, device: torch.device) -> None:
        """On the student's device, in eval mode."""
        if self.teacher is not None:
            self.teacher.to(device)
            self.teacher.eval()

    def losses(self, images: torch.Tensor, student_logits: torch.Tensor, hard_loss: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        """{"loss_kd", "loss"}: see src.losses.distillation.distillation_losses."""
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return distillation_losses(student_logits, teacher_logits, hard_loss, self.alpha, self.temperature)
