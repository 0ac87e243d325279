"""Clear the outputs and execution counts of notebooks before committing them:
`python scripts/strip_notebooks.py [notebooks/*.ipynb]` (default: every notebook in notebooks/).

tests/notebooks checks that committed notebooks are stripped: outputs in git go stale and bloat diffs."""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def strip(path: Path) -> bool:
    """Strip one notebook in place; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    if changed:
        nbformat.write(nb, path)
    return changed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path)
    args = p.parse_args(argv)
    for path in args.paths or sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"{path}: {'stripped' if strip(path) else 'already clean'}")


if __name__ == "__main__":
    main()
