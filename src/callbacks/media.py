"""Send a picture to every logger that can show one (W&B, TensorBoard) and save it as PNG in the run dir."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


def log_image(trainer, key: str, image: np.ndarray, step: int | None = None) -> Path | None:
    """`image` is RGB uint8 HxWx3. Returns the PNG path (rank 0 only)."""
    if not trainer.is_global_zero:
        return None
    out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "media"
    out_dir.mkdir(parents=True, exist_ok=True)
    step = trainer.global_step if step is None else step
    path = out_dir / f"{key.replace('/', '_')}_step{step:06d}.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for lg in trainer.loggers:
        name = type(lg).__name__
        try:
            if name == "WandbLogger":
                lg.log_image(key=key, images=[image], step=step)
            elif name == "TensorBoardLogger":
                lg.experiment.add_image(key, image, global_step=step, dataformats="HWC")
        except Exception as e:  # a logger that cannot take images must not stop training
            log.warning("Could not log image %s to %s: %s", key, name, e)
    return path
