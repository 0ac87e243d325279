"""class_balanced_sampler: over one epoch every class is drawn about equally often, whatever its share."""

import numpy as np
import pytest
import torch

from src.data.samplers import class_balanced_sampler, class_weights


class Labels:
    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)


def test_class_frequencies_near_uniform_over_an_epoch():
    counts = [3000, 1500, 900, 600, 300, 150, 50]  # 60:1 skew like rare clothing styles
    ds = Labels(np.repeat(np.arange(7), counts))
    torch.manual_seed(0)
    drawn = ds.labels[list(class_balanced_sampler(ds))]
    assert len(drawn) == len(ds)  # one epoch
    freq = np.bincount(drawn, minlength=7) / len(drawn)
    # multinomial with p=1/7, n=6500: sd = sqrt(p(1-p)/n) = 0.0043; allow 4 sd
    assert np.abs(freq - 1 / 7).max() < 4 * np.sqrt((1 / 7) * (6 / 7) / len(drawn))


def test_power_and_errors():
    w = class_weights(np.array([0, 0, 0, 0, 1]), power=0.5)
    assert np.allclose(w, [0.5, 0.5, 0.5, 0.5, 1.0])
    with pytest.raises(AttributeError, match="labels"):
        class_balanced_sampler(object())
