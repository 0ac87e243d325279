"""Self-contained checkpoints: the resolved Hydra config travels inside every Lightning checkpoint, so
eval/embed/detect/recognize rebuild the exact model from the .ckpt alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

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
    return _config(read_checkpoint(path), path)


def _config(ckpt: dict, path: str | Path) -> DictConfig:
    if CONFIG_KEY not in ckpt:
        raise KeyError(f"{path}: no '{CONFIG_KEY}' in checkpoint (not written by src.train?)")
    return _renamed_legacy_nodes(OmegaConf.create(ckpt[CONFIG_KEY]))


def load_system(path: str | Path, model_overrides: dict | None = None) -> tuple[L.LightningModule, DictConfig]:
    """Instantiate the LightningModule described by the checkpoint's config and load its weights (eval mode)."""
    ckpt = read_checkpoint(path)
    cfg = _config(ckpt, path)
    model_cfg = cfg.model
    if model_overrides:
        model_cfg = OmegaConf.merge(model_cfg, model_overrides)
    system = instantiate(without_pretrained(model_cfg))  # weights come from the file: never a download
    system.on_load_checkpoint(ckpt)  # as Lightning does: the module restores what it saved (e.g. categories)
    system.load_state_dict(ckpt["state_dict"])
    system.eval()
    return system, cfg


# Constructor arguments renamed since checkpoints were written: {system _target_: {old name: new name}}.
LEGACY_ARGUMENTS = {"src.models.detection.DetectionSystem": {"model": "net"}}


# Classes renamed since checkpoints were written: {old _target_: new _target_}.
LEGACY_TARGETS = {"src.data.batch_samplers.AspectRatioBucketBatchSampler":
                  "src.data.batch_samplers.AspectBucketResizeBatchSampler"}


def _renamed_legacy_nodes(cfg: DictConfig) -> DictConfig:
    """The checkpoint's config with old names renamed: classes (LEGACY_TARGETS) and the system's constructor
    arguments (old checkpoints say `model.model` for the detector, now `model.net`)."""
    for node in _nodes(cfg):
        if node.get("_target_") in LEGACY_TARGETS:
            node._target_ = LEGACY_TARGETS[node._target_]
    system = cfg.get("model")
    renames = LEGACY_ARGUMENTS.get(system.get("_target_"), {}) if isinstance(system, DictConfig) else {}
    for old, new in renames.items():
        if old in cfg.model and new not in cfg.model:
            with open_dict(cfg.model):
                cfg.model[new] = cfg.model.pop(old)
    return cfg


def _nodes(node):
    """Every DictConfig under `node` (itself included), depth first."""
    if isinstance(node, DictConfig):
        yield node
        for v in node.values():
            yield from _nodes(v)
