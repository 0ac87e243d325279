"""Report the trials of a Hydra multirun and the best one: `python scripts/sweep_summary.py <multirun dir>`.

Reads every `<job>/train_summary.json` (written by src.train) and the Optuna sweeper's
`optimization_results.yaml` when present."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def collect(multirun_dir: Path) -> list[dict]:
    rows = []
    for summary in sorted(multirun_dir.glob("*/train_summary.json")):
        data = json.loads(summary.read_text())
        name = data.get("optimized_metric")
        overrides_file = summary.parent / ".hydra/overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        rows.append({"job": summary.parent.name, "metric": name, "value": data["metrics"].get(name),
                     "overrides": overrides, "best_ckpt_path": data.get("best_ckpt_path")})
    return rows


def best(rows: list[dict], mode: str = "max") -> dict:
    scored = [r for r in rows if r["value"] is not None]
    if not scored:
        raise ValueError("no finished trial reported its optimized metric")
    return (max if mode == "max" else min)(scored, key=lambda r: r["value"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("multirun_dir", type=Path)
    ap.add_argument("--mode", choices=["max", "min"], default="max")
    args = ap.parse_args()
    rows = collect(args.multirun_dir)
    for r in rows:
        print(f"job {r['job']:>3}  {r['metric']}={r['value']}  {' '.join(r['overrides'])}")
    b = best(rows, args.mode)
    print(f"best: job {b['job']} {b['metric']}={b['value']} overrides={b['overrides']} ckpt={b['best_ckpt_path']}")
    optuna = args.multirun_dir / "optimization_results.yaml"
    if optuna.is_file():
        print("optuna:", yaml.safe_load(optuna.read_text()))


if __name__ == "__main__":
    main()
