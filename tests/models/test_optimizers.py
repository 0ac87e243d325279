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


def _two_groups(seed=0):
    """A backbone at a tenth of the head's rate, as backbone_and_head_groups builds them (with names)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return net, [{"params": list(net[0].parameters()), "lr": 1e-4, "name": "backbone"},
                 {"params": list(net[2].parameters()), "lr": 1e-3, "name": "head"}]


def _run(make_optimizer, steps=13):
    """The optimizer from `make_optimizer(groups)` and the net's weights after `steps` steps on fixed data."""
    net, groups = _two_groups()
    opt = make_optimizer(groups)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):  # > 2 x Lookahead's k=6: two slow-weight syncs
        opt.zero_grad()
        net(torch.randn(8, 4, generator=g)).pow(2).mean().backward()
        opt.step()
    return opt, [p.detach().clone() for p in net.parameters()]


def _same_optimizer(a, b):
    """Same class (and wrapped class), same param groups (params, names, lr, weight decay and every other
    hyperparameter: no extra no-decay group), same weights after the same steps."""
    (opt_a, w_a), (opt_b, w_b) = a, b
    assert type(opt_a) is type(opt_b)
    assert type(getattr(opt_a, "_base_optimizer", None)) is type(getattr(opt_b, "_base_optimizer", None))
    assert len(opt_a.param_groups) == len(opt_b.param_groups)
    for ga, gb in zip(opt_a.param_groups, opt_b.param_groups):
        assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}
        assert [p.shape for p in ga["params"]] == [p.shape for p in gb["params"]]
    for x, y in zip(w_a, w_b):
        assert torch.equal(x, y)


def test_ranger_through_timm_factory_equals_old_helper():
    """Equality check before deleting src/models/optimizers.py: timm's create_optimizer_v2 as a Hydra partial
    gives what the hand-written wrapper gave."""
    new = instantiate(OmegaConf.create({"_target_": "timm.optim.create_optimizer_v2", "_partial_": True,
                                        "opt": "lookahead_radam", "lr": 1.0e-3, "weight_decay": 1.0e-4}))
    old = instantiate(OmegaConf.load(CONF / "optimizer" / "ranger.yaml"))
    assert old.func.__module__ == "src.models.optimizers"
    _same_optimizer(_run(new), _run(old))
