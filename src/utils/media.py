"""Pictures out of a run: PNG files written atomically, and images sent to the loggers that can show them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from src.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode a {rgb.shape} image as PNG")
    return buf.tobytes()


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write RGB uint8 HxWx3 as a PNG file (atomically: a reader never sees half a file)."""
    atomic_write_bytes(path, png_bytes(rgb))
    return Path(path)


def figure_rgb(fig) -> np.ndarray:
    """A matplotlib figure as RGB uint8 HxWx3 (what `fig.savefig(format="png")` draws)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    bgr = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


IMAGE_LOGGERS = ("WandbLogger", "TensorBoardLogger")


def send_image(loggers: Iterable, key: str, image: np.ndarray | Callable[[], np.ndarray], step: int,
               caption: str | None = None) -> None:
    """RGB uint8 HxWx3 (or a function drawing it, called only if a logger takes images) to every logger that
    takes images (W&B `log_image`, TensorBoard `add_image`); others, such as CSV, are skipped. A logger that
    fails is warned about: pictures must not stop training."""
    takers = [lg for lg in loggers if type(lg).__name__ in IMAGE_LOGGERS]
    if takers and callable(image):
        image = image()
    for lg in takers:
        name = type(lg).__name__
        try:
            if name == "WandbLogger":
                lg.log_image(key=key, images=[image], step=step, **({"caption": [caption]} if caption else {}))
            else:
                lg.experiment.add_image(key, image, global_step=step, dataformats="HWC")
        except Exception as e:
            log.warning("Could not log image %s to %s: %s", key, name, e)
