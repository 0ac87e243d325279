"""Finding runs and their best checkpoints under outputs/."""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY = "train_summary.json"


def latest_best_checkpoint(outputs_dir: str | Path) -> Path:
    """The best checkpoint of the most recent run that finished training (has a train_summary.json)."""
    outputs_dir = Path(outputs_dir)
    summaries = sorted(outputs_dir.rglob(SUMMARY), key=lambda p: p.stat().st_mtime)
    for summary in reversed(summaries):
        data = json.loads(summary.read_text())
        ckpt = data.get("best_ckpt_path") or data.get("last_ckpt_path")
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt)
    raise FileNotFoundError(f"no finished run with a checkpoint under {outputs_dir}; train first or pass CKPT=...")
