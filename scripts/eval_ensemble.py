"""Evaluate an ensemble of checkpoints (averaged softmax probabilities), optionally with TTA, on the test set
of the first checkpoint's data config; writes metrics.json, report.md and the report pictures.

    python scripts/eval_ensemble.py a.ckpt b.ckpt c.ckpt --out-dir outputs/ensemble [--weights 1 1 2]
        [--tta-hflip] [--tta-scales 1.0 1.15] [--data key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from src.eval import render_report  # noqa: E402
from src.models.ensemble import ensemble_system  # noqa: E402
from src.utils import resolvers  # noqa: E402,F401
from src.utils.io import atomic_write_json, atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--weights", type=float, nargs="+")
    ap.add_argument("--tta-hflip", action="store_true")
    ap.add_argument("--tta-scales", type=float, nargs="+")
    ap.add_argument("--data", nargs="*", default=[], help="dotlist overrides of the data config (key=value)")
    args = ap.parse_args(argv)
    system, train_cfg = ensemble_system(args.ckpts, args.weights, args.tta_hflip, args.tta_scales)
    datamodule = instantiate(OmegaConf.merge(train_cfg.data, OmegaConf.from_dotlist(args.data)))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=L.pytorch.loggers.CSVLogger(str(out), name="csv"),
                        default_root_dir=str(out), enable_checkpointing=False, enable_progress_bar=False)
    results = trainer.test(system, datamodule=datamodule)
    metrics = {k: float(v) for r in results for k, v in r.items()}
    artifacts = system.report_artifacts(out)
    atomic_write_json(out / "metrics.json", {"checkpoints": args.ckpts, "weights": args.weights,
                                             "tta_hflip": args.tta_hflip, "tta_scales": args.tta_scales,
                                             "metrics": metrics})
    atomic_write_text(out / "report.md", render_report(Path(args.ckpts[0]), metrics, artifacts, out))
    print({k: round(v, 4) for k, v in metrics.items()})
    return metrics


if __name__ == "__main__":
    main()
