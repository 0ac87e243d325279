"""Optimizer configs: each instantiates from conf/optimizer and takes a step; Ranger is Lookahead(RAdam) from timm."""

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


def test_ranger_config_is_lookahead_radam_over_the_groups_as_given():
    """conf/optimizer/ranger.yaml (timm's create_optimizer_v2, completed with the groups) equals Lookahead(RAdam)
    built by hand from the same groups. Kept from the equality check that replaced src/models/optimizers.py."""
    from timm.optim import Lookahead

    ranger = instantiate(OmegaConf.load(CONF / "optimizer" / "ranger.yaml"))
    by_hand = lambda groups: Lookahead(torch.optim.RAdam(groups, lr=1.0e-3, weight_decay=1.0e-4), alpha=0.5, k=6)  # noqa
    _same_optimizer(_run(ranger), _run(by_hand))
    opt, _ = _run(ranger)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("backbone", 1e-4, 1e-4), ("head", 1e-3, 1e-4)]
