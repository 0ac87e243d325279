"""OmegaConf resolvers used by conf/. Registered on import (entry points and tests import this module)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def register() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    # torchvision detectors count the background class: `num_classes: ${plus_one:${data.num_classes}}`.
    OmegaConf.register_new_resolver("plus_one", lambda n: int(n) + 1, replace=True)
    # W&B goes offline by itself without an API key (sync later with `wandb sync <run dir>`).
    OmegaConf.register_new_resolver("wandb_offline", lambda: not wandb_has_credentials(), replace=True)


register()
