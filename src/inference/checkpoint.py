"""The one reader of training checkpoints on the serving path: checkpoint -> (network, InferenceSettings).

Only the injected network (`model.net` of the stored config) is rebuilt, never the LightningModule: no loss
heads, no Lightning, no pytorch-metric-learning. Hydra's `instantiate` builds the network from its `_target_`
(imported here, lazily; ONNX serving never comes here). Checkpoints written before the `inference:` node
existed get their settings from the stored config as before (`data.eval_transform`,
`recognition.gallery_views`, `detect:`), so old runs keep serving.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from src.inference.settings import CHECKPOINT_KEY, DETECTION_KEYS, InferenceSettings

__all__ = ["CONFIG_KEY", "load_network", "read_checkpoint", "settings_from_config", "without_pretrained"]

CONFIG_KEY = "hydra_config"  # the resolved training config src.train stores in every checkpoint
CATEGORIES_KEY = "detection_categories"  # DetectionSystem stores its COCO categories under it
_SYSTEM_KINDS = {"EmbeddingSystem": "embedder", "DetectionSystem": "detector", "ClassificationSystem": "classifier"}
_ARTICLE = {"embedder": "an embedder", "detector": "a detector", "classifier": "a classifier"}


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Our checkpoints hold plain containers: weights_only=True loads them safely, and without Lightning.
    return torch.load(path, map_location="cpu", weights_only=True)


def without_pretrained(node: Any) -> Any:
    """The config with every `pretrained: true` backbone turned off: weights come from the checkpoint, and
    loading one must never download (or need the local ImageNet files)."""
    for sub in _configs_with_pretrained(node):
        sub["pretrained"] = False
        if "checkpoint_path" in sub:
            sub["checkpoint_path"] = None
    return node


def _configs_with_pretrained(node: Any) -> Iterator[Any]:
    if isinstance(node, Mapping) or hasattr(node, "items"):
        if "pretrained" in node and "_target_" in node:
            yield node
        for value in node.values():
            yield from _configs_with_pretrained(value)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for value in node:
            yield from _configs_with_pretrained(value)


def settings_from_config(cfg: Mapping[str, Any], kind: str, categories: list | None = None) -> InferenceSettings:
    """The settings a training config declares (its `inference:` node), for a system of ``kind``. The eval
    transform is instantiated and stored as albumentations serialises it. Configs from before the node
    existed: `recognition.gallery_views` and `detect:` are read instead."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg) if not OmegaConf.is_config(cfg) else cfg
    node = OmegaConf.select(cfg, "inference", default=None) or OmegaConf.create({})
    data = OmegaConf.select(cfg, "data", default=None) or OmegaConf.create({})
    transform = None
    if kind != "detector":
        transform_cfg = node.get("eval_transform") or data.get("eval_transform")
        if transform_cfg is None:
            raise KeyError("the config has no inference.eval_transform (nor data.eval_transform): "
                           "cannot rebuild the preprocessing")
        import albumentations as A

        transform = A.to_dict(instantiate(transform_cfg))
    views = node.get("gallery_views")
    if views is None:
        views = OmegaConf.select(cfg, "recognition.gallery_views", default=None)
    detection = node.get("detection")
    if detection is None:  # the old `detect:` recipe; only its keys that serving reads
        legacy = OmegaConf.select(cfg, "detect", default=None) or {}
        detection = {k: legacy[k] for k in DETECTION_KEYS if legacy.get(k) is not None}
    detection = OmegaConf.to_container(detection, resolve=True) if OmegaConf.is_config(detection) else detection

    def pick(key):
        value = node.get(key)
        return value if value is not None else data.get(key)

    return InferenceSettings(kind=kind, eval_transform=transform, gallery_views=tuple(views or ()),
                             eval_size=pick("eval_size") if kind == "detector" else None,
                             max_size=pick("max_size") if kind == "detector" else None,
                             detection={k: v for k, v in (detection or {}).items() if v is not None},
                             categories=categories)


def _kind_of(config: Mapping[str, Any]) -> str | None:
    target = str((config.get("model") or {}).get("_target_", ""))
    return _SYSTEM_KINDS.get(target.rsplit(".", 1)[-1])


def load_network(path: str | os.PathLike, kind: str | None) -> tuple[nn.Module, InferenceSettings]:
    """(the eval-mode network of a src.train checkpoint, its inference settings); ``kind`` is what the caller
    serves ("embedder" / "detector"; None: whatever the checkpoint holds), and a checkpoint of another kind
    is one clear error."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ckpt = read_checkpoint(path)
    config = ckpt.get(CONFIG_KEY)
    if config is None:
        raise KeyError(f"{path}: no '{CONFIG_KEY}' in checkpoint (not written by src.train?)")
    if CHECKPOINT_KEY in ckpt:
        settings = InferenceSettings.from_dict(ckpt[CHECKPOINT_KEY], f"{path} [{CHECKPOINT_KEY}]")
    else:
        stored_kind = _kind_of(config) or kind
        if stored_kind is None:
            raise ValueError(f"{path}: cannot tell which kind of model it holds (no '{CHECKPOINT_KEY}' settings)")
        if kind is not None and stored_kind != kind:
            raise ValueError(f"{path} holds {_ARTICLE[stored_kind]}, not {_ARTICLE[kind]}")
        try:
            settings = settings_from_config(config, stored_kind, ckpt.get(CATEGORIES_KEY))
        except KeyError as err:
            raise KeyError(f"{path}: {err.args[0]}") from None
    if kind is not None and settings.kind != kind:
        raise ValueError(f"{path} holds {_ARTICLE[settings.kind]}, not {_ARTICLE[kind]}")
    model_cfg = config.get("model") or {}
    name = "net" if "net" in model_cfg else "model"  # detection checkpoints before the rename call it `model`
    if name not in model_cfg:
        raise KeyError(f"{path}: its config has no model.net to rebuild the network from")
    net = instantiate(without_pretrained(OmegaConf.create(model_cfg[name])))
    prefix = f"{name}."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise KeyError(f"{path}: its state_dict has no '{prefix}*' weights")
    net.load_state_dict(state)
    return net.eval(), settings
