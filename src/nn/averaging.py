"""Weight averaging: the arithmetic mean of several state dicts (the last N epochs' weights)."""

from __future__ import annotations

import os
from typing import Sequence

import torch


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of floating-point tensors (weights and BN running statistics), accumulated in float64 so the result
    is the arithmetic mean to fp32 precision; integer tensors (e.g. num_batches_tracked) come from the last state."""
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[-1].keys())
    for i, s in enumerate(states):
        if set(s.keys()) != set(keys):
            diff = sorted(set(keys) ^ set(s.keys()))[:5]
            raise KeyError(f"state {i} has different keys than the last one (e.g. {diff})")
    out = {}
    for k in keys:
        last = states[-1][k]
        if torch.is_floating_point(last):
            acc = torch.zeros_like(last, dtype=torch.float64, device="cpu")
            for s in states:
                acc += s[k].detach().to("cpu", torch.float64)
            out[k] = (acc / len(states)).to(last.dtype)
        else:
            out[k] = last.detach().clone().cpu()
    return out


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> dict:
    """Lightning checkpoints -> the last one with `state_dict` replaced by the mean of all (its config, epoch and
    hyperparameters kept so it loads like any checkpoint); optimizer state dropped (it belongs to no weights)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    ckpts = []
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"checkpoint not found: {p}")
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        if "state_dict" not in ckpt:
            raise KeyError(f"{p}: no 'state_dict' (not a Lightning checkpoint)")
        ckpts.append(ckpt)
    out = {k: v for k, v in ckpts[-1].items() if k not in ("optimizer_states", "lr_schedulers")}
    out["state_dict"] = average_state_dicts([c["state_dict"] for c in ckpts])
    out["averaged_from"] = [str(p) for p in paths]
    return out
