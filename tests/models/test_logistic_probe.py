"""The classification probe is scikit-learn's logistic regression (same objective: centred features over one
global scale, L2 on the weights with strength 1 / C), solved in torch and folded into a Linear layer over the raw
features."""

import numpy as np
import pytest
import torch

from src.models.logistic_probe import fit_logistic_probe


def _blobs(n_per_class=40, dim=24, classes=4, spread=2.5, seed=0):
    """Overlapping Gaussian classes with very different feature scales (as pooled CNN features have)."""
    fixed, rng = np.random.default_rng(0), np.random.default_rng(seed)  # same classes, new samples per seed
    centres, scale, shift = fixed.normal(0, 1, (classes, dim)), fixed.uniform(0.01, 100, dim), fixed.normal(0, 50, dim)
    x = np.concatenate([c + spread * rng.normal(0, 1, (n_per_class, dim)) for c in centres])
    x = x * scale + shift
    y = np.repeat(np.arange(classes), n_per_class)
    return torch.from_numpy(x).float(), torch.from_numpy(y)


def global_scaled(x: torch.Tensor, train: torch.Tensor) -> np.ndarray:
    """Centred on the training mean, divided by the training features' RMS (one number for all dimensions)."""
    t = train.double().numpy()
    centred = t - t.mean(0)
    return (x.double().numpy() - t.mean(0)) / np.sqrt((centred ** 2).mean())


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_probe_matches_scikit_learns_logistic_regression(c):
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs()
    xv, yv = _blobs(seed=1)
    probe = fit_logistic_probe(x, y, num_classes=4, c=c, max_iter=500)
    ref = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(global_scaled(x, x), y.numpy())
    ours = torch.softmax(probe.logits(xv).double(), 1).numpy()
    theirs = ref.predict_proba(global_scaled(xv, x))
    # Both solve the same strictly convex problem to tight tolerances; float32 storage of the folded weights
    # (feature scales up to 100) leaves ~1e-4 in the probabilities.
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    assert 0.4 < (ours.argmax(1) == yv.numpy()).mean() < 0.99  # overlapping classes: a non-trivial probe


def test_classes_without_training_samples_are_left_out():
    x, y = _blobs(classes=3)
    probe = fit_logistic_probe(x, y * 2, num_classes=6)  # labels 0, 2, 4
    assert probe.seen.tolist() == [True, False, True, False, True, False]
    assert probe.weight[~probe.seen].abs().sum() == 0 and probe.bias[~probe.seen].abs().sum() == 0
    assert set(probe.logits(x).argmax(1).tolist()) <= {0, 2, 4}


@pytest.mark.parametrize("labels, num_classes, message", [
    (torch.zeros(8, dtype=torch.long), 3, ">= 2 classes"),
    (torch.tensor([0, 1, 2, 3] * 2), 3, r"labels must be in \[0, 3\)"),
])
def test_bad_labels_raise_one_clear_error(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        fit_logistic_probe(torch.randn(8, 5), labels, num_classes)
