"""Fold BatchNorm into the preceding convolution for inference (conv -> BN -> act becomes conv' -> act).

Pairs are found by running the model once, not by module names: a forward pre-hook on every BatchNorm2d checks
whether its input is the very tensor a Conv2d just returned, and the autograd graph confirms that the conv's
output has no other consumer (folding would change what that consumer sees). This works for any timm or
torchvision CNN, including timm's BatchNormAct2d (BN + activation in one module), which becomes its activation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


@dataclass(frozen=True)
class FusedPair:
    conv: str
    bn: str


def _consumer_counts(root) -> dict:
    """How many autograd nodes take each node's output as an input (edges counted once per consumer)."""
    counts: dict = {}
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                counts[nxt] = counts.get(nxt, 0) + 1
                stack.append(nxt)
    return counts


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if hasattr(bn, "act") and hasattr(bn, "drop"):  # timm BatchNormAct2d: batch_norm -> drop -> act
        return nn.Sequential(bn.drop, bn.act)
    return None  # an unknown BN subclass may do more than normalise: leave it alone


def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[FusedPair]:
    """Conv2d -> BatchNorm2d pairs where the BN reads the conv's output and nothing else does."""
    names = {m: n for n, m in model.named_modules()}
    conv_out: dict[int, tuple[torch.Tensor, str]] = {}
    candidates: list[tuple[str, str, torch.Tensor]] = []
    bn_calls: dict[str, int] = {}

    def conv_hook(mod, args, out):
        conv_out[id(out)] = (out, names[mod])  # keep the tensor alive so ids stay unique

    def bn_hook(mod, args):
        bn_calls[names[mod]] = bn_calls.get(names[mod], 0) + 1
        x = args[0]
        hit = conv_out.get(id(x))
        if hit is not None and hit[0] is x:
            candidates.append((hit[1], names[mod], x))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(bn_hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.enable_grad():
            out = model(example.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    out = out if isinstance(out, torch.Tensor) else out[0]
    counts = _consumer_counts(out.grad_fn)
    conv_calls: dict[str, int] = {}
    for _, name in conv_out.values():
        conv_calls[name] = conv_calls.get(name, 0) + 1
    pairs = []
    for conv_name, bn_name, x in candidates:
        # Modules called more than once (weight sharing) cannot be folded for one call only.
        if conv_calls[conv_name] != 1 or bn_calls[bn_name] != 1:
            continue
        if x.grad_fn is not None and counts.get(x.grad_fn, 0) == 1:
            pairs.append(FusedPair(conv_name, bn_name))
    return pairs


def fuse_conv_bn(model: nn.Module, example: torch.Tensor, inplace: bool = False) -> tuple[nn.Module, list[FusedPair]]:
    """Return (model with BN folded into convs, the fused pairs). The model must be in eval mode: folding uses
    the running statistics, which is what eval-mode BN computes."""
    if model.training:
        raise ValueError("fuse_conv_bn needs an eval-mode model (BN folding uses running statistics)")
    fused = model if inplace else copy.deepcopy(model)
    pairs = find_conv_bn_pairs(fused, example)
    modules = dict(fused.named_modules())
    done = []
    for pair in pairs:
        conv, bn = modules[pair.conv], modules[pair.bn]
        if bn.running_mean is None or bn.running_var is None:
            continue
        replacement = _bn_replacement(bn)
        if replacement is None:
            continue
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        parent_name, _, attr = pair.bn.rpartition(".")
        setattr(modules[parent_name] if parent_name else fused, attr, replacement)
        done.append(pair)
    return fused, done
