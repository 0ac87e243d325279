"""average_state_dicts: arithmetic mean of float tensors, integers from the last state."""

import pytest
import torch

from src.nn.averaging import average_state_dicts


def test_mean_and_integer_buffers():
    states = [{"w": torch.full((2, 2), float(i)), "n": torch.tensor(i)} for i in (1, 2, 6)]
    out = average_state_dicts(states)
    assert torch.equal(out["w"], torch.full((2, 2), 3.0))
    assert out["n"].item() == 6


def test_mismatched_keys_fail():
    with pytest.raises(KeyError):
        average_state_dicts([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
    with pytest.raises(ValueError):
        average_state_dicts([])
