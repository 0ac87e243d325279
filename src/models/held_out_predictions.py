"""Softmax probabilities of a test set by sample uid, written as `test_probs{suffix}.npz` and `.csv`: the
out-of-fold predictions of a fold run (scripts/gather_oof.py gathers the folds' files into soft labels)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from src.utils.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


class HeldOutPredictions:
    """Collects (probabilities, dataset index, label) per test batch on the CPU; `write` empties it."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def reset(self) -> None:
        self.parts = []

    def add(self, logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> None:
        self.parts.append((F.softmax(logits.float(), -1).cpu(), index.cpu(), labels.cpu()))

    def __len__(self) -> int:
        return len(self.parts)

    def index(self) -> np.ndarray:
        return torch.cat([p[1] for p in self.parts]).numpy()

    def write(self, out_dir: str | Path, uids: Sequence[str], suffix: str = "") -> None:
        """`uids`: one per collected sample, in `index()` order."""
        probs = torch.cat([p[0] for p in self.parts]).numpy()
        index, labels = self.index(), torch.cat([p[2] for p in self.parts]).numpy()
        out = Path(out_dir)
        buf = io.BytesIO()
        np.savez(buf, uids=np.asarray(uids), probs=probs.astype(np.float32), labels=labels, index=index)
        atomic_write_bytes(out / f"test_probs{suffix}.npz", buf.getvalue())
        header = "uid,label,pred," + ",".join(f"p{c}" for c in range(probs.shape[1]))
        rows = [f"{u},{int(y)},{int(p.argmax())}," + ",".join(f"{v:.6f}" for v in p)
                for u, y, p in zip(uids, labels, probs)]
        atomic_write_text(out / f"test_probs{suffix}.csv", "\n".join([header, *rows]) + "\n")
        log.info("Wrote %d test predictions to %s", len(uids), out)
        self.reset()
