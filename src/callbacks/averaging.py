"""Weight averaging as Lightning callbacks: the mean of the last N epochs' weights, and an EMA of the weights.
Each writes a normal checkpoint (through `trainer.save_checkpoint`, so the Hydra config travels with it and
`python -m src.eval ckpt_path=<it>` evaluates it like any other). Not Lightning's WeightAveraging /
EMAWeightAveraging (same EMA weights without decay warmup): those put the average into validation, into every
checkpoint and into the model at the end of fit, so model selection would change; these leave training, selection
and the saved checkpoints on the trained weights (tests/callbacks/test_averaging_callbacks.py)."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import lightning as L
import torch

from src.nn.averaging import average_state_dicts

log = logging.getLogger(__name__)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_with_weights(trainer: L.Trainer, pl_module: L.LightningModule, state: dict, path: Path) -> None:
    """Write a checkpoint of `pl_module` holding `state` instead of its current weights, then put them back."""
    current = _cpu_state(pl_module)
    pl_module.load_state_dict(state)
    try:
        trainer.save_checkpoint(str(path))
    finally:
        pl_module.load_state_dict(current)


class LastEpochsAverage(L.Callback):
    """Keeps the weights at the end of each of the last `num_epochs` training epochs (on CPU) and, when fit ends,
    writes their arithmetic mean to `<dirpath>/<filename>` (default dirpath: the ModelCheckpoint's, else
    `<default_root_dir>/checkpoints`). BatchNorm statistics are averaged like the weights.
    (The mean of checkpoints saved on disk: scripts/average_checkpoints.py.)"""

    def __init__(self, num_epochs: int = 3, dirpath: str | None = None, filename: str = "avg_last{n}.ckpt") -> None:
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        self.num_epochs, self.dirpath, self.filename = num_epochs, dirpath, filename
        self.states: deque[dict] = deque(maxlen=num_epochs)
        self.epochs: deque[int] = deque(maxlen=num_epochs)
        self.path: Path | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        self.states.append(_cpu_state(pl_module))
        self.epochs.append(trainer.current_epoch)

    def _target(self, trainer: L.Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        folder = self.dirpath or getattr(ckpt, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / self.filename.format(n=len(self.states))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.states:
            return
        self.path = self._target(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_with_weights(trainer, pl_module, average_state_dicts(list(self.states)), self.path)
        log.info("Wrote the average of epochs %s to %s", list(self.epochs), self.path)

    # The kept weights are not put into checkpoints (N extra copies of a large model in every .ckpt): a resumed
    # run starts a new window, or average the saved epoch checkpoints with scripts/average_checkpoints.py.


class EMAWeights(L.Callback):
    """Exponential moving average of `pl_module.<attr>` (the network; timm's ModelEmaV3: a deep copy of the whole
    LightningModule would copy its trainer), updated after every optimizer step;
    written as `<dirpath>/ema.ckpt` when fit ends. `warmup=True` uses timm's decay warmup
    (decay ramps up over the first steps, so early random weights fade quickly)."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, dirpath: str | None = None,
                 filename: str = "ema.ckpt", attr: str = "net") -> None:
        self.decay, self.warmup, self.dirpath, self.filename, self.attr = decay, warmup, dirpath, filename, attr
        self.ema = None
        self.path: Path | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from timm.utils import ModelEmaV3

        if self.ema is None:
            self.ema = ModelEmaV3(getattr(pl_module, self.attr), decay=self.decay, use_warmup=self.warmup)
        self.ema.module.to(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ema.update(getattr(pl_module, self.attr), step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is None or trainer.fast_dev_run:
            return
        folder = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None) or \
            Path(trainer.default_root_dir) / "checkpoints"
        self.path = Path(folder) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = _cpu_state(pl_module)
        state.update({f"{self.attr}.{k}": v for k, v in _cpu_state(self.ema.module).items()})
        save_with_weights(trainer, pl_module, state, self.path)
        log.info("Wrote EMA weights (decay %.4f) to %s", self.decay, self.path)

    def state_dict(self) -> dict:
        return {"ema": _cpu_state(self.ema.module)} if self.ema is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("ema")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending = getattr(self, "_pending", None)
        if pending is not None and self.ema is not None:
            self.ema.module.load_state_dict(pending)
            self._pending = None
