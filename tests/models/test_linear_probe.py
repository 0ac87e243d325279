"""The linear probe on frozen features: it starts at zero-shot (step 0 is a candidate) and learns the map that
separates identities when the raw features are dominated by a nuisance direction."""

import numpy as np
import pytest
import torch

from src.models.linear_probe import fit_linear_probe, imprint_class_weights, project
from src.retrieval.metrics import evaluate_retrieval


def _features(n_ids: int, per_id: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity in 8 dims (small), plus a large per-image nuisance in 24 other dims."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, 8, generator=g)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    signal = centres[labels] + 0.2 * torch.randn(len(labels), 8, generator=g)
    nuisance = 3.0 * torch.randn(len(labels), 24, generator=g)
    return torch.cat([signal, nuisance], dim=1), labels


def _recall(neck, q, ql, g, gl) -> float:
    return evaluate_retrieval(project(neck, q), ql.numpy(), project(neck, g), gl.numpy(), ks=(1,))["recall@1"]


@pytest.mark.numeric
def test_probe_learns_to_ignore_the_nuisance_on_unseen_identities():
    train_x, train_y = _features(40, 6, seed=0)
    x, y = _features(20, 4, seed=1)  # unseen identities: first view is the gallery, the rest are queries
    gallery, queries = torch.arange(len(y)) % 4 == 0, torch.arange(len(y)) % 4 != 0

    def score(neck):
        return _recall(neck, x[queries], y[queries], x[gallery], y[gallery])

    neck, history = fit_linear_probe(train_x, train_y, score, steps=200, lr=1e-2, eval_every=20)
    # Measured over 4 seeds with 1 and 2 threads: start 0.03-0.13, best 0.95-0.98.
    start, best = history[0][1], max(s for _, s in history)
    assert history[0][0] == 0 and start < 0.6, history  # zero-shot: the nuisance dominates
    assert score(neck) == best and best > start + 0.25, history


def test_probe_never_returns_worse_than_its_start():
    train_x, train_y = _features(10, 4, seed=2)

    def score(neck):  # a validation that only the identity map satisfies
        return -float((neck.fc.weight - torch.eye(32)).abs().sum())

    neck, history = fit_linear_probe(train_x, train_y, score, steps=30, lr=1e-1, eval_every=10)
    torch.testing.assert_close(neck.fc.weight, torch.eye(32))


def test_imprinted_weights_are_normalised_class_means():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    w = imprint_class_weights(x, torch.tensor([0, 1, 0]), 2)
    np.testing.assert_allclose(w.T.numpy(), [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)
