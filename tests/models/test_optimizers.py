"""Optimizer configs: each instantiates from conf/optimizer and takes a step; Ranger is Lookahead(RAdam)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("name", ["adamw", "sgd", "radam", "ranger"])
def test_optimizer_config_steps(name):
    model = torch.nn.Linear(4, 2)
    opt = instantiate(OmegaConf.load(CONF / "optimizer" / f"{name}.yaml"))(model.parameters())
    before = model.weight.detach().clone()
    for _ in range(7):  # > Lookahead's k=6, so the slow weights sync once
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(before, model.weight)
    if name == "ranger":
        assert type(opt).__name__ == "Lookahead" and type(opt._base_optimizer).__name__ == "RAdam"
