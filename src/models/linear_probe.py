"""Linear probe on frozen features for retrieval: the reference a fine-tuning run has to beat.

A `LinearNeck` (identity-initialised, so step 0 is the zero-shot model) trained with ArcFace on cached
training features (and their horizontal flips), full batch, for a fixed number of steps; the step with the
best validation score is kept. Seconds of CPU for thousands of images."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torch.nn import functional as F

from src.nn.necks import LinearNeck


def imprint_class_weights(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[dim, num_classes] normalised class means (weight imprinting): the margin head starts at the nearest-
    class-mean classifier of the features instead of random directions."""
    f = F.normalize(features, dim=1)
    sums = torch.zeros(num_classes, f.shape[1]).index_add_(0, labels, f)
    return F.normalize(sums, dim=1).T.contiguous()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, score: Callable[[torch.nn.Module], float],
                     steps: int = 100, lr: float = 1e-3, eval_every: int = 10, margin: float = 28.6479,
                     scale: float = 30.0, seed: int = 0) -> tuple[LinearNeck, list[tuple[int, float]]]:
    """Train a LinearNeck on `features` [N, D] with `labels` [N]; `score(neck)` -> validation metric (higher is
    better). Returns the best neck (step 0 included: the probe never reports worse than zero-shot on
    validation) and the (step, score) history."""
    torch.manual_seed(seed)
    labels = torch.as_tensor(labels, dtype=torch.long)
    _, labels = torch.unique(labels, return_inverse=True)  # dense class ids for the head
    num_classes = int(labels.max()) + 1
    neck = LinearNeck(features.shape[1], init="identity")
    head = ArcFaceLoss(num_classes, features.shape[1], margin=margin, scale=scale)
    with torch.no_grad():
        head.W.copy_(imprint_class_weights(features, labels, num_classes))
    opt = torch.optim.AdamW([*neck.parameters(), *head.parameters()], lr=lr, weight_decay=0.0)
    with torch.no_grad():
        best = score(neck)
    best_state, history = {k: v.clone() for k, v in neck.state_dict().items()}, [(0, best)]
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = head(F.normalize(neck(features), dim=1), labels)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                s = score(neck)
            history.append((step, s))
            if s > best:
                best, best_state = s, {k: v.clone() for k, v in neck.state_dict().items()}
    neck.load_state_dict(best_state)
    return neck, history


def project(neck: torch.nn.Module, features: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return F.normalize(neck(features), dim=1).numpy().astype(np.float32)
