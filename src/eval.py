"""Evaluation entry point: `python -m src.eval ckpt_path=<file|latest>` (or `make eval CKPT=...`).

Rebuilds datamodule and model from the config stored in the checkpoint, runs the test loop and writes
`metrics.json` and `report.md` (plus any pictures the model produces through `report_artifacts(out_dir)`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from src.utils import resolvers  # noqa: E402,F401
from src.utils.checkpoint import load_system  # noqa: E402
from src.utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from src.utils.run_dirs import latest_best_checkpoint  # noqa: E402

log = logging.getLogger(__name__)


def render_report(ckpt: Path, metrics: dict[str, float], artifacts: list[Path], out_dir: Path) -> str:
    lines = ["# Evaluation report", "", f"- checkpoint: `{ckpt}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    for a in artifacts:
        lines += ["", f"![{a.stem}]({os.path.relpath(a, out_dir)})"]
    return "\n".join(lines) + "\n"


def evaluate_only(callback) -> bool:
    """Training-only callbacks are dropped at evaluation; the rest (retrieval metrics, pictures) compute metrics."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    return not isinstance(callback, (ModelCheckpoint, EarlyStopping, LearningRateMonitor))


def evaluation_callbacks(train_cfg: DictConfig) -> list:
    cbs = [instantiate(c) for c in (train_cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    return [c for c in cbs if evaluate_only(c)]


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    ckpt = Path(cfg.ckpt_path) if cfg.ckpt_path != "latest" else latest_best_checkpoint(cfg.paths.outputs_dir)
    log.info("Evaluating %s", ckpt)
    model, train_cfg = load_system(ckpt, cfg.get("model_overrides") or None)
    data_cfg = OmegaConf.merge(train_cfg.data, cfg.get("data_overrides") or {})
    datamodule = instantiate(data_cfg)
    out_dir = Path(cfg.report_dir or cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = instantiate({"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(out_dir), "name": "csv"})
    trainer = instantiate(cfg.trainer, logger=logger, default_root_dir=str(out_dir),
                          callbacks=evaluation_callbacks(train_cfg))
    trainer.test(model=model, datamodule=datamodule)
    # callback_metrics, not test()'s per-dataloader list: multi-loader results carry '/dataloader_idx_N' suffixes.
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if trainer.is_global_zero:
        artifacts = list(model.report_artifacts(out_dir)) if hasattr(model, "report_artifacts") else []
        atomic_write_json(out_dir / "metrics.json", {"checkpoint": str(ckpt), "metrics": metrics})
        atomic_write_text(out_dir / "report.md", render_report(ckpt, metrics, artifacts, out_dir))
        log.info("Wrote %s and %s", out_dir / "metrics.json", out_dir / "report.md")
    return metrics, {"model": model, "datamodule": datamodule, "out_dir": out_dir, "ckpt": ckpt}


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    metrics, objects = evaluate(cfg)
    print(f"metrics ({objects['ckpt']}):")
    for k, v in sorted(metrics.items()):
        print(f"  {k}: {v:.4f}")


if __name__ == "__main__":
    main()
