"""Samplers for skewed class balance. Factories take the dataset, so a DataModule can build them after `setup`
(`sampler: {_target_: src.data.samplers.class_balanced_sampler, _partial_: true}`)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def class_weights(labels: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-sample weight count(label)^-power: power=1 gives every class the same expected share, power=0.5 the
    'square-root' compromise between natural and uniform frequencies."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    counts = np.bincount(labels)
    return counts[labels].astype(np.float64) ** (-float(power))


def class_balanced_sampler(dataset, num_samples: int | None = None, power: float = 1.0,
                           replacement: bool = True) -> WeightedRandomSampler:
    """Draws `num_samples` (default: one epoch = len(dataset)) indices with class-balanced probabilities.
    `dataset.labels` (ImageDataset has it) gives the class of each index. Randomness follows torch's global
    RNG, which Lightning's `seed_everything` seeds."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise AttributeError(f"{type(dataset).__name__} has no `labels` array; class_balanced_sampler needs one")
    weights = torch.as_tensor(class_weights(labels, power), dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=int(num_samples or len(labels)), replacement=replacement)
