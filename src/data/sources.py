"""Where a dataset lives and how it gets there. `prepare()` runs once (DataModule.prepare_data); `root` is the
folder that list and annotation paths are relative to."""

from __future__ import annotations

from pathlib import Path

from src.data.generate_once import GeneratedSource
from src.data.retail_world.generate import WorldSpec, ensure_world


class LocalDataset:
    """A dataset already on disk (real data): prepare() only checks that it is there."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def prepare(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")


class RetailWorld(GeneratedSource):
    """The embedded, generated retail world (the default data). Generated on first use, cached by spec."""

    spec_class = WorldSpec
    ensure = staticmethod(ensure_world)
