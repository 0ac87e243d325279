"""The boundary the layout promises (README "Layout"): training -> checkpoint -> inference -> recognition ->
service. Read from the source (every import, lazy ones included), so a shortcut fails here, not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
TRAINING = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "pytorch_metric_learning",
            "src.models", "src.callbacks", "src.losses", "src.utils.checkpoint", "src.train")
MAX_LINES = 400


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offending(folder: str, banned: tuple[str, ...], src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted((src / folder).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == b or name.startswith(b + ".") for b in banned):
                bad.append(f"{path.relative_to(src.parent)} imports {name}")
    return bad


@pytest.mark.parametrize("folder", ["recognition", "service"])
def test_serving_imports_no_training_code(folder):
    assert _offending(folder, TRAINING) == []


def test_inference_reads_checkpoints_without_lightning():
    """src/inference may use Hydra (lazily, to rebuild a checkpoint's network), never Lightning or the systems."""
    assert _offending("inference", ("lightning", "pytorch_lightning", "pytorch_metric_learning", "src.models",
                                    "src.callbacks", "src.losses", "src.utils.checkpoint", "src.recognition",
                                    "src.service")) == []


@pytest.mark.parametrize("folder", ["nn", "losses", "retrieval"])
def test_pure_folders_import_no_lightning_or_hydra(folder):
    assert _offending(folder, ("lightning", "pytorch_lightning", "hydra", "omegaconf", "src.models",
                               "src.callbacks", "src.recognition", "src.service")) == []


def test_no_load_system_on_the_serving_path():
    for folder in ("recognition", "service"):
        for path in (SRC / folder).rglob("*.py"):
            assert "load_system" not in path.read_text(), path


def test_no_file_in_src_is_over_the_limit():
    """Small files with one job each: a module past 400 lines is split along its seams."""
    long = {str(p.relative_to(SRC.parent)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_can_fail(tmp_path):
    bad = tmp_path / "src" / "recognition"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text("def f():\n    from hydra.utils import instantiate\n")  # a lazy import counts
    assert _offending("recognition", TRAINING, tmp_path / "src") == ["src/recognition/x.py imports hydra.utils"]
