"""Resuming a killed run also resumes its W&B run: the run id is kept next to the checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id.txt"


def prepare_wandb_resume(cfg: DictConfig) -> None:
    """If `ckpt_path` lies in a run dir that logged to W&B, continue that W&B run instead of starting a new one."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg:
        return
    ckpt = Path(cfg.ckpt_path)
    for parent in list(ckpt.parents)[:3]:
        id_file = parent / WANDB_ID_FILE
        if id_file.is_file():
            with open_dict(cfg):
                cfg.logger.wandb.id = id_file.read_text().strip()
                cfg.logger.wandb.resume = "allow"
            log.info("Resuming W&B run %s", cfg.logger.wandb.id)
            return
