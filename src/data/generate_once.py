"""Write a generated dataset once per spec: into a temporary sibling folder renamed into place, so an
interrupted run never leaves a half-written dataset that looks complete (DONE is written last)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def generate_once(root: str | os.PathLike, tag: str, write: Callable[[Path], None], what: str = "dataset") -> Path:
    """Return `root/tag`, calling `write(tmp_dir)` first unless a complete copy (DONE) is already there."""
    root = Path(root)
    target = root / tag
    if (target / "DONE").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tag}-", dir=root))
    try:
        log.info("Generating %s %s into %s", what, tag, target)
        write(tmp)
        (tmp / "DONE").write_text("ok\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "DONE").exists():  # another process finished first: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
