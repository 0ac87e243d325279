"""Embed a data split with a trained checkpoint: `python -m src.embed ckpt_path=<file|latest> [split=query]
[output=embeddings.npz]`.

The model and datamodule are rebuilt from the config stored in the checkpoint; the data section may be
overridden:

    python -m src.embed ckpt_path=a.ckpt split=gallery                       # the checkpoint's test gallery
    python -m src.embed ckpt_path=a.ckpt +data.test_query=lists/new.txt      # merged into the stored data config
    python -m src.embed ckpt_path=a.ckpt data=retail_retrieval split=train   # conf/data/<name> replaces it
    python -m src.embed 'ckpt_paths=[a.ckpt,b.ckpt]' split=query             # ensemble

A `data` section holding a `_target_` (a config group option) replaces the stored one; otherwise its keys are
merged over it. Every split, `train` included, goes through the checkpoint's *eval* transform (deterministic
embeddings), in list-file order.

Ensemble: each model embeds with its own stored data config (own image size and normalisation; the `data`
override is applied to each), the rows are checked to be the same items, and the result is
`l2_normalize(concat(l2_normalize(e_1), ..., l2_normalize(e_m)))`: every model weighs the same in the cosine.

Output (.npz, written atomically): `embeddings` float32 [n, d], `labels` int64 [n], `ids` (unique ids, str),
`paths` (str), `index` (row in the list file, int64), `split`, `checkpoints` (str).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from src.data import keys  # noqa: E402
from src.data.datasets import collate_skip_none  # noqa: E402
from src.retrieval.search import l2_normalize  # noqa: E402
from src.utils import resolvers  # noqa: E402,F401
from src.utils.checkpoint import load_system  # noqa: E402
from src.utils.io import atomic_write_bytes  # noqa: E402
from src.utils.run_dirs import latest_best_checkpoint  # noqa: E402

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"query": "test_query", "gallery": "test_gallery"}


def data_config(stored: DictConfig, override: DictConfig | dict | None) -> DictConfig:
    """The checkpoint's data config with `override` merged in, or `override` itself if it has a `_target_`."""
    if not override:
        return stored
    if "_target_" in override:
        return OmegaConf.create(OmegaConf.to_container(override, resolve=True))
    return OmegaConf.merge(stored, override)


@torch.no_grad()
def embed_split(system, datamodule, split: str, device: str = "cpu", batch_size: int | None = None) -> dict:
    """Embed one split of a datamodule (one with `dataset(split)`, e.g. RetrievalDataModule) with `system`
    (whose forward returns one embedding per image) through the eval transform, in list order."""
    split = SPLIT_ALIASES.get(split, split)
    if not hasattr(datamodule, "dataset"):
        raise TypeError(f"{type(datamodule).__name__} has no dataset(split) method; src.embed needs a "
                        "RetrievalDataModule-like datamodule")
    paths = getattr(datamodule, "paths", {})
    if split not in paths or not paths[split]:
        known = sorted(k for k, v in paths.items() if v)
        raise KeyError(f"split={split!r} is not set in the data config; available: {known} (or query/gallery)")
    datamodule.prepare_data()
    datamodule.train_transform = datamodule.eval_transform  # no augmentation when embedding the train split
    ds = datamodule.dataset(split)
    loader = DataLoader(ds, batch_size=batch_size or datamodule.eval_batch_size, shuffle=False,
                        num_workers=datamodule.num_workers, collate_fn=collate_skip_none)
    system.eval().to(device)
    embs, index = [], []
    for batch in loader:
        if batch is None:
            continue
        out = system(batch[keys.IMAGE].to(device))
        if out.ndim != 2:
            raise ValueError(f"the model returned shape {tuple(out.shape)}; src.embed needs [batch, dim] embeddings")
        embs.append(out.float().cpu())
        index.append(batch[keys.INDEX])
    if not embs:
        raise ValueError(f"split {split!r}: no readable image")
    idx = torch.cat(index).numpy().astype(np.int64)
    samples = [ds.samples[i] for i in idx]
    return {
        "embeddings": torch.cat(embs).numpy().astype(np.float32),
        "labels": np.array([s.label for s in samples], dtype=np.int64),
        "ids": np.array([s.uid for s in samples], dtype=str),
        "paths": np.array([s.path for s in samples], dtype=str),
        "index": idx,
    }


def ensemble(parts: list[dict]) -> dict:
    """Concatenate the L2-normalised embeddings of several models (same items, same order), normalise again."""
    first = parts[0]
    for i, p in enumerate(parts[1:], start=2):
        if not np.array_equal(p["ids"], first["ids"]):
            raise ValueError(f"model {i} embedded different items than model 1 (unreadable files or other lists?)")
    out = {k: v for k, v in first.items() if k != "embeddings"}
    out["embeddings"] = l2_normalize(np.concatenate([l2_normalize(p["embeddings"]) for p in parts], axis=1))
    return out


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def checkpoints(cfg: DictConfig) -> list[Path]:
    if cfg.get("ckpt_paths"):
        if cfg.get("ckpt_path") not in (None, "latest"):
            raise ValueError("pass ckpt_path (one model) or ckpt_paths (ensemble), not both")
        return [Path(p) for p in cfg.ckpt_paths]
    if cfg.ckpt_path == "latest":
        return [latest_best_checkpoint(cfg.paths.outputs_dir)]
    return [Path(cfg.ckpt_path)]


def embed(cfg: DictConfig) -> tuple[dict, Path]:
    ckpts = checkpoints(cfg)
    parts = []
    for ckpt in ckpts:
        log.info("Embedding split %s with %s", cfg.split, ckpt)
        system, train_cfg = load_system(ckpt)
        datamodule = instantiate(data_config(train_cfg.data, cfg.get("data")))
        parts.append(embed_split(system, datamodule, cfg.split, cfg.device, cfg.get("batch_size")))
    result = parts[0] if len(parts) == 1 else ensemble(parts)
    result["split"] = np.array(SPLIT_ALIASES.get(cfg.split, cfg.split))
    result["checkpoints"] = np.array([str(c) for c in ckpts], dtype=str)
    out = Path(cfg.output)
    atomic_write_bytes(out, npz_bytes(result))
    log.info("Wrote %s: %d x %d", out, *result["embeddings"].shape)
    return result, out


@hydra.main(version_base="1.3", config_path="../conf", config_name="embed")
def main(cfg: DictConfig) -> None:
    result, out = embed(cfg)
    print(f"{out}: {result['embeddings'].shape[0]} embeddings of dim {result['embeddings'].shape[1]}")


if __name__ == "__main__":
    main()
