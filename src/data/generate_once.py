"""Write a generated dataset once per spec: into a temporary sibling folder renamed into place, so an
interrupted run never leaves a half-written dataset that looks complete (DONE is written last)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

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


def spec_tag(prefix: str, version: int, spec: Any) -> str:
    """`<prefix><version>-<10 hex>`: the generator version and a hash of every field of the spec (a
    dataclass), so data generated with other parameters or by another generator version is never reused."""
    blob = json.dumps({"version": version, **asdict(spec)}, sort_keys=True)
    return f"{prefix}{version}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


class GeneratedSource:
    """A dataset source generated on first use and cached by spec: `root` = `data_dir/<spec tag>`. Subclasses
    name their spec dataclass and the function that generates it (`ensure(data_dir, spec) -> folder`)."""

    spec_class: type
    ensure: Callable[..., Path]

    def __init__(self, data_dir: str, **spec) -> None:
        self.spec = self.spec_class(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in spec.items()})
        self.data_dir = Path(data_dir)

    @property
    def root(self) -> Path:
        return self.data_dir / self.spec.tag

    def prepare(self) -> None:
        self.ensure(self.data_dir, self.spec)
