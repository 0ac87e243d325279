"""Box geometry: one IoU for the whole repository, by ``torchvision.ops`` (src/recognition/pipeline.py uses it on
tensors directly).

Boxes are ``(x1, y1, x2, y2)``. torch is imported on the first call, not with this module: src/retrieval uses
it and must import without torch (tests/retrieval/test_dependencies.py).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["box_iou"]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes by :func:`torchvision.ops.box_iou` in float64; 0 for empty or
    degenerate ones (where torchvision divides 0 by 0).

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
    0.3333333333333333
    """
    import torch
    from torchvision.ops import box_iou as pairwise_iou

    pair = torch.tensor([list(a), list(b)], dtype=torch.float64)
    iou = float(pairwise_iou(pair[:1], pair[1:])[0, 0])
    return iou if iou > 0 else 0.0  # NaN (0 / 0) and -0.0 (an inverted box) are no overlap
