"""Send a picture to every logger that can show one (W&B, TensorBoard) and save it as PNG in the run dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.utils.media import save_png, send_image


def log_image(trainer, key: str, image: np.ndarray, step: int | None = None) -> Path | None:
    """`image` is RGB uint8 HxWx3. Returns the PNG path (rank 0 only)."""
    if not trainer.is_global_zero:
        return None
    step = trainer.global_step if step is None else step
    path = save_png(image, Path(trainer.log_dir or trainer.default_root_dir) / "media"
                    / f"{key.replace('/', '_')}_step{step:06d}.png")
    send_image(trainer.loggers, key, image, step)
    return path
