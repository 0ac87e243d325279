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


def spec_tag(prefix: str, version: int, spec) -> str:
    """`<prefix><version>-<hash>`: the folder name of a generated dataset, from its generator version and every
    field of its (dataclass) spec, so a changed spec or generator never reuses an old copy."""
    blob = json.dumps({"version": version, **asdict(spec)}, sort_keys=True)
    return f"{prefix}{version}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


class GeneratedSource:
    """A DataModule source whose data are generated on first use under `data_dir/<spec tag>`. Subclasses set
    `spec_type` (a dataclass with a `tag`) and `ensure(data_dir, spec)` (generate unless there)."""

    spec_type: type
    ensure: Callable

    def __init__(self, data_dir: str, **spec) -> None:
        self.spec = self.spec_type(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in spec.items()})
        self.data_dir = Path(data_dir)

    @property
    def root(self) -> Path:
        return self.data_dir / self.spec.tag

    def prepare(self) -> None:
        self.ensure(self.data_dir, self.spec)
