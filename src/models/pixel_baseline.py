"""The classical reference a trained classifier must beat: a linear model on raw pixels (scikit-learn).

Fashion-MNIST's authors benchmarked scikit-learn models on pixels (logistic regression ~0.84, SVC ~0.90); a
network that does not clearly beat this line has not learned anything a linear model could not."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def pixel_matrix(paths: Sequence[str], size: int) -> np.ndarray:
    """Grey images resized to size x size, flattened to float32 rows in [0, 1] ([N, size * size])."""
    out = np.empty((len(paths), size * size), np.float32)
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise FileNotFoundError(f"cannot read image {p}")
        if img.shape != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out[i] = img.reshape(-1) / 255.0
    return out


def per_class_subset(labels: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most `per_class` samples of each label (random, reproducible); all when None."""
    if per_class is None:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def fit_pixel_baseline(train_x: np.ndarray, train_y: np.ndarray, c: float = 0.1, max_iter: int = 200):
    """Standardised pixels -> multinomial logistic regression (lbfgs). Returns a fitted sklearn Pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    return model.fit(train_x, train_y)


def accuracy_and_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"acc": float(accuracy_score(y_true, y_pred)), "f1": float(f1_score(y_true, y_pred, average="macro"))}
