"""Markdown table of fine-tuning runs against their baselines, read from each run's train_summary.json:
plain zero-shot features, the untrained platform model, the linear probe on frozen features, the returned model.

    python scripts/finetune_table.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--metric recall@1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.run_dirs import SUMMARY  # noqa: E402

COLUMNS = (("zero-shot", "zero_shot/{}"), ("untrained platform", "initial/{}"), ("linear probe", "linear_probe/{}"),
           ("fine-tuned (returned)", "{}"))


def row(name: str, run_dir: Path, metric: str) -> str:
    summary = json.loads((run_dir / SUMMARY).read_text())
    m = summary["metrics"]
    cells = []
    for split in ("val", "test"):
        for _, pattern in COLUMNS:
            value = m.get(pattern.format(f"{split}/{metric}"))
            cells.append("-" if value is None else f"{value:.3f}")
    return f"| {name} | " + " | ".join(cells) + f" | {summary.get('selected', 'trained')} |"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--metric", default="recall@1")
    args = ap.parse_args(argv)
    heads = [f"{split} {title}" for split in ("val", "test") for title, _ in COLUMNS]
    print(f"| {args.metric} | " + " | ".join(heads) + " | returned |")
    print("|---|" + "---:|" * len(heads) + "---|")
    for spec in args.runs:
        name, _, path = spec.partition("=")
        print(row(name, Path(path), args.metric))


if __name__ == "__main__":
    main()
