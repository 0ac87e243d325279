"""Self-contained checkpoints: the resolved Hydra config travels inside every Lightning checkpoint, so
eval/embed/detect/recognize rebuild the exact model from the .ckpt alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.inference.checkpoint import CONFIG_KEY, read_checkpoint, settings_from_config, without_pretrained
from src.inference.settings import CHECKPOINT_KEY as INFERENCE_KEY



log = logging.getLogger(__name__)

class StoreConfigInCheckpoint(L.Callback):
    """Every checkpoint carries the resolved config (to rebuild or resume the run) and, for systems that
    declare an ``inference_kind``, the `inference:` settings serving reads (src/inference/settings.py)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self._inference: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        kind = getattr(pl_module, "inference_kind", None)
        if kind is not None and self._inference is None:  # built once: instantiating the eval transform is not free
            try:
                self._inference = settings_from_config(self.config, kind,
                                                       getattr(pl_module, "categories", None)).to_dict()
            except KeyError as err:  # e.g. no eval transform: the run trains on; serving it names what is missing
                log.warning("checkpoints of this run carry no inference settings: %s", err.args[0])
                self._inference = {}
        if self._inference:
            checkpoint[INFERENCE_KEY] = self._inference


def config_from_checkpoint(path: str | Path) -> DictConfig:
    ckpt = read_checkpoint(path)
    if CONFIG_KEY not in ckpt:
        raise KeyError(f"{path}: no '{CONFIG_KEY}' in checkpoint (not written by src.train?)")
    return OmegaConf.create(ckpt[CONFIG_KEY])


def load_system(path: str | Path, model_overrides: dict | None = None) -> tuple[L.LightningModule, DictConfig]:
    """Instantiate the LightningModule described by the checkpoint's config and load its weights (eval mode)."""
    ckpt = read_checkpoint(path)
    if CONFIG_KEY not in ckpt:
        raise KeyError(f"{path}: no '{CONFIG_KEY}' in checkpoint (not written by src.train?)")
    cfg = OmegaConf.create(ckpt[CONFIG_KEY])
    model_cfg = cfg.model
    if model_overrides:
        model_cfg = OmegaConf.merge(model_cfg, model_overrides)
    system = instantiate(without_pretrained(model_cfg))  # weights come from the file: never a download
    system.on_load_checkpoint(ckpt)  # as Lightning does: the module restores what it saved (e.g. categories)
    system.load_state_dict(ckpt["state_dict"])
    system.eval()
    return system, cfg
