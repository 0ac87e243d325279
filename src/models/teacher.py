"""Load a distillation teacher from a checkpoint: one of ours (config inside) or a plain state dict + a net."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from src.nn.distill import FrozenTeacher
from src.utils.checkpoint import CONFIG_KEY, load_system, read_checkpoint


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
