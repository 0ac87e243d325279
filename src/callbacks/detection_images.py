"""A picture of detections vs ground truth on a few validation images, each validation epoch: saved as PNG in
the run dir and sent to loggers that take images (W&B `log_image`, TensorBoard `add_image`).

Reads what `DetectionSystem.validation_step` returns ({"preds", "targets"} in original image pixels), so the
model does no extra work for it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from src.data import keys
from src.models.detection_pictures import add_examples, draw_examples
from src.utils.media import save_png, send_image


class DetectionImageLogger(L.Callback):
    def __init__(self, num_images: int = 4, score_threshold: float = 0.5, every_n_epochs: int = 1,
                 dirname: str = "detections", key: str = "val/detections") -> None:
        self.num_images = num_images
        self.score_threshold = score_threshold
        self.every_n_epochs = every_n_epochs
        self.dirname = dirname
        self.key = key
        self.examples: list[dict] = []
        self.saved: list[Path] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.examples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer) or not outputs or batch is None or len(self.examples) >= self.num_images:
            return
        add_examples(self.examples, self.num_images, batch[keys.IMAGE], batch[keys.TARGET], outputs["preds"],
                     outputs["targets"])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.examples or not self._active(trainer) or not trainer.is_global_zero:
            return
        picture = draw_examples(self.examples, getattr(pl_module, "categories", None), self.score_threshold)
        path = save_png(picture, Path(trainer.default_root_dir) / self.dirname
                        / f"val_epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}.png")
        self.saved.append(path)
        send_image(trainer.loggers, self.key, picture, trainer.global_step,
                   caption="ground truth green, predictions red")
        self.examples = []
