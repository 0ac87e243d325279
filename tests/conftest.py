"""Shared fixtures: configs composed from conf/ forced to CPU, tiny generated data and temporary output dirs."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from src.utils import resolvers  # noqa: E402,F401

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# A small retail world: a few seconds to generate, shared by the whole session.
TINY_WORLD = {
    "num_families": 8,
    "variants_per_family": 2,
    "num_train_skus": 10,
    "train_views": 4,
    "val_views": 2,
    "gallery_views": 2,
    "query_views": 3,
    "train_scenes": 6,
    "val_scenes": 4,
}
TINY_WORLD_OVERRIDES = [f"++data.source.{k}={v}" for k, v in TINY_WORLD.items()]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.outputs_dir = str(output_dir.parent)
    return cfg


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """make_cfg(overrides, tiny_world=True) -> train config on CPU writing into tmp_path."""

    def _make(overrides: list[str] | None = None, tiny_world: bool = True, config_name: str = "train") -> DictConfig:
        ov = ["trainer=cpu", "logger=csv", *(overrides or [])]
        if tiny_world:
            ov += [o for o in TINY_WORLD_OVERRIDES if not any(o.split("=")[0].lstrip("+") in x for x in ov)]
        return compose_cfg(config_name, ov, tmp_path / "run", data_dir)

    return _make
