"""Where a dataset lives and how it gets there. `prepare()` runs once (DataModule.prepare_data); `root` is the
folder that list and annotation paths are relative to."""

from __future__ import annotations

from pathlib import Path

from src.data.retail_world.generate import WorldSpec, ensure_world


class LocalDataset:
    """A dataset already on disk (real data): prepare() only checks that it is there."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def prepare(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")


class RetailWorld:
    """The embedded, generated retail world (the default data). Generated on first use, cached by spec."""

    def __init__(self, data_dir: str, **spec) -> None:
        self.spec = WorldSpec(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in spec.items()})
        self.data_dir = Path(data_dir)

    @property
    def root(self) -> Path:
        return self.data_dir / self.spec.tag

    def prepare(self) -> None:
        ensure_world(self.data_dir, self.spec)
