"""Model selection that counts the starting weights: a fine-tuning run whose epochs never beat the model it
started from (on the monitored validation metric) returns that starting model, and says so."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)
INITIAL_CKPT = "initial.ckpt"


def save_initial(trainer: L.Trainer, checkpoint_dir: str | Path) -> Path:
    """Write the current (untrained) weights as a checkpoint beside the epoch checkpoints."""
    path = Path(checkpoint_dir) / INITIAL_CKPT
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


def improves(score: float | None, reference: float, mode: str) -> bool:
    """True when `score` is strictly better than `reference` in `mode` ("max" or "min")."""
    if score is None or not math.isfinite(float(score)):
        return False
    return float(score) > reference if mode == "max" else float(score) < reference


def choose_returned(best_path: str | None, best_score, initial_path: Path | None, initial_score: float | None,
                    monitor: str, mode: str) -> tuple[str | None, str]:
    """(checkpoint to return, "trained" or "initial"). The starting model wins ties: training must earn its
    place. Without an initial checkpoint the best epoch is returned as before."""
    if initial_path is None or initial_score is None:
        return best_path, "trained"
    score = None if best_score is None else float(best_score)
    if best_path and improves(score, initial_score, mode):
        initial_path.unlink(missing_ok=True)  # not needed any more; large for big backbones
        return best_path, "trained"
    log.warning("No epoch beat the starting weights on %s (start %.4f, best epoch %s): returning the starting "
                "model %s", monitor, initial_score, "none" if score is None else f"{score:.4f}", initial_path)
    return str(initial_path), "initial"
