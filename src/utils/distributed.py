"""Gathering tensors across DDP ranks with torch.distributed alone (no Lightning), so pure losses can use it."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_varlen(x: torch.Tensor) -> torch.Tensor:
    """The ranks' `x` concatenated in rank order along dim 0, whose length may differ by rank (padded to the
    longest for the collective, the padding dropped). One process: `x` itself. The result is on `x`'s device;
    under NCCL the collective runs on the current CUDA device."""
    if world_size() == 1:
        return x
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else x.device
    n = torch.tensor([x.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(lengths), *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in lengths]
    dist.all_gather(out, padded)
    return torch.cat([o[:k] for o, k in zip(out, lengths)]).to(x.device)
