"""Evaluation entry point: `python -m src.eval ckpt_path=<file|latest>` (or `make eval CKPT=...`).

Rebuilds datamodule and model from the config stored in the checkpoint, runs the test loop and writes
`metrics.json` and `report.md` (plus any pictures the model produces through `report_artifacts(out_dir)`).
"""

from __future__ import annotations

import json
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
from src.utils.run_dirs import SUMMARY, latest_best_checkpoint  # noqa: E402

log = logging.getLogger(__name__)


BASELINE_PREFIXES = ("pixel_logreg", "zero_shot", "linear_probe", "initial")


def run_baselines(ckpt: Path) -> dict[str, dict[str, float]]:
    """The reference numbers (pixel baseline, zero-shot, linear probe, untrained start) that the training run
    measured on its test split, from `<run>/train_summary.json` beside `<run>/checkpoints/<ckpt>`:
    {prefix: {"test/acc": ...}}; empty when the checkpoint is not inside a finished run."""
    summary = ckpt.parent.parent / SUMMARY
    if not summary.is_file():
        return {}
    try:
        metrics = json.loads(summary.read_text()).get("metrics", {})
    except (OSError, ValueError):
        return {}
    out: dict[str, dict[str, float]] = {}
    for k, v in metrics.items():
        prefix, _, rest = k.partition("/")
        if prefix in BASELINE_PREFIXES and rest.startswith("test/"):
            out.setdefault(prefix, {})[rest] = float(v)
    return out


def render_report(ckpt: Path, metrics: dict[str, float], artifacts: list[Path], out_dir: Path,
                  baselines: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: the metrics, with a column per baseline the training run measured on the same test split."""
    baselines = {p: baselines[p] for p in BASELINE_PREFIXES if baselines and p in baselines}
    lines = ["# Evaluation report", "", f"- checkpoint: `{ckpt}`", ""]
    if baselines:
        lines += ["Baselines were measured by the training run on the same test split (`train_summary.json`).", ""]
    lines += ["| metric | " + "".join(f"{p} | " for p in baselines) + "model |",
              "|---|" + "---|" * (len(baselines) + 1)]
    lines += [f"| {k} | " + "".join(f"{b[k]:.4f} | " if k in b else " | " for b in baselines.values()) + f"{v:.4f} |"
              for k, v in sorted(metrics.items())]
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
        baselines = run_baselines(ckpt)
        if baselines:
            atomic_write_json(out_dir / "baselines.json", baselines)
        atomic_write_text(out_dir / "report.md", render_report(ckpt, metrics, artifacts, out_dir, baselines))
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
