"""Linear probe for classification: multinomial logistic regression on frozen features, solved full batch with
L-BFGS in torch, returned as the weight and bias of a `nn.Linear` over the raw features.

The objective is scikit-learn's `LogisticRegression(C=c)` (L2 on the weights, not the bias) on centred features
divided by one global scale s (their RMS): mean cross-entropy + |W|^2 / (2 c N). The global scale makes one `c`
fit any backbone's feature magnitude; it is affine, so it folds into the linear layer:
W (x - mu) / s + b = (W / s) x + (b - W mu / s).
Not per-dimension standardisation: pooled ReLU features have near-constant dimensions on the training images
(std ~1e-3 of the median on Lite0), whose weights it divides by ~0; augmented or mixed images then light them up
and the head's logits reach the tens (measured: training loss ~23 at the first steps of fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LinearProbe:
    weight: torch.Tensor  # [num_classes, dim], for raw (unstandardised) features
    bias: torch.Tensor  # [num_classes]
    seen: torch.Tensor  # [num_classes] bool: classes with training samples (other rows are zero, not fitted)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight.dtype) @ self.weight.T + self.bias


def fit_logistic_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float = 1.0,
                       max_iter: int = 200) -> LinearProbe:
    """`features` [N, D], `labels` [N] in [0, num_classes). Classes without samples are left out of the fit."""
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [N, D] and labels [N], got {tuple(features.shape)}, {tuple(labels.shape)}")
    if c <= 0:
        raise ValueError(f"probe C (inverse regularisation) must be > 0, got {c}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")
    if labels.unique().numel() < 2:
        raise ValueError(f"a linear probe needs training samples of >= 2 classes, got {labels.unique().tolist()}")
    # Lightning's validation runs under inference mode (no autograd): this solve needs it back.
    with torch.inference_mode(False), torch.enable_grad():
        return _solve(features.detach().clone(), labels.clone(), num_classes, c, max_iter)


def _solve(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float, max_iter: int) -> LinearProbe:
    classes, dense = torch.unique(labels, return_inverse=True)
    # float64: the solve is tiny (N x D), and L-BFGS's stopping tests behave better without float32 noise.
    x = features.double()
    mean = x.mean(0)
    scale = (x - mean).pow(2).mean().sqrt().clamp_min(1e-12)
    x = (x - mean) / scale
    n, k = x.shape[0], classes.numel()
    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-8, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, dense) + (w * w).sum() / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        w_raw = w / scale
        b_raw = b - w_raw @ mean
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float32)
    bias = torch.zeros(num_classes, dtype=torch.float32)
    weight[classes], bias[classes] = w_raw.float(), b_raw.float()
    seen = torch.zeros(num_classes, dtype=torch.bool)
    seen[classes] = True
    return LinearProbe(weight, bias, seen)
