"""Backbone helpers on timm's contract (`forward_features`, `num_features`, `feature_info`)."""

from __future__ import annotations

from torch import nn


def set_last_stride_one(backbone: nn.Module) -> int:
    """Remove the down-sampling of the last stage (ReID "last stride 1": 2x finer final feature map).
    Works on timm models that expose `feature_info`; returns how many modules were changed."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(backbone).__name__} has no feature_info; cannot find its last stage")
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    last = entries[-1]
    if len(entries) > 1 and entries[-2]["reduction"] == last["reduction"]:
        raise ValueError(f"{type(backbone).__name__}: last stage does not down-sample")
    stage = backbone.get_submodule(last["module"])
    changed = 0
    for m in stage.modules():
        stride = getattr(m, "stride", None)
        if isinstance(m, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d)) and stride not in (1, (1, 1)):
            m.stride = (1, 1) if isinstance(m, nn.Conv2d) else 1
            changed += 1
    if changed == 0:
        raise ValueError(f"{type(backbone).__name__}: no strided layer found in stage '{last['module']}'")
    return changed
