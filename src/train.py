"""Training entry point: `python -m src.train experiment=<name> [overrides]`.

`train(cfg)` is the testable core: instantiate datamodule, model, callbacks, loggers and trainer from the
config, fit, test on the best checkpoint and return (metrics, objects). `main` is the thin Hydra wrapper that
returns the optimized metric so sweepers (basic, Optuna) can read it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from src.utils import resolvers  # noqa: E402,F401  (registers ${project_root:} etc.)
from src.utils.checkpoint import StoreConfigInCheckpoint  # noqa: E402
from src.utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from src.utils.run_dirs import SUMMARY  # noqa: E402
from src.utils.wandb_resume import WANDB_ID_FILE, prepare_wandb_resume  # noqa: E402

log = logging.getLogger(__name__)


def _instantiate_dict(node: DictConfig | None) -> list:
    return [instantiate(v) for v in (node or {}).values() if v is not None and "_target_" in v]


def _as_float_dict(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("ckpt_path"):
        prepare_wandb_resume(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model)
    callbacks = _instantiate_dict(cfg.get("callbacks")) + [StoreConfigInCheckpoint(cfg)]
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(resolved))
    for lg in loggers:
        lg.log_hyperparams(resolved)
        if type(lg).__name__ == "WandbLogger":
            atomic_write_text(output_dir / WANDB_ID_FILE, lg.version + "\n")

    metrics: dict[str, float] = {}
    if cfg.get("validate_before_fit") and not cfg.get("ckpt_path"):
        trainer.validate(model=model, datamodule=datamodule, verbose=False)
        metrics.update({f"initial/{k}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_as_float_dict(trainer.callback_metrics))
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if cfg.get("test", True):
        if best is None:
            log.warning("No best checkpoint (fast_dev_run or no monitor); testing the current weights")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best)
        metrics.update(_as_float_dict(trainer.callback_metrics))

    summary = {
        "best_ckpt_path": best,
        "last_ckpt_path": getattr(ckpt_cb, "last_model_path", None) or None,
        "metrics": metrics,
        "optimized_metric": cfg.get("optimized_metric"),
    }
    if trainer.is_global_zero:
        atomic_write_json(output_dir / SUMMARY, summary)
    _finish_wandb(loggers)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "callbacks": callbacks,
               "loggers": loggers}
    return metrics, objects


def _finish_wandb(loggers: list) -> None:
    # Flush offline W&B runs to disk now, so `wandb sync` (and tests) find a complete run.
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics and not cfg.get("test", True) and name.startswith("test/"):
        log.warning("optimized_metric %s not computed (test=false)", name)
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} not among the metrics: {sorted(metrics)}")
    return metrics[name]


def print_summary(metrics: dict[str, float]) -> None:
    """Before/after table for metrics also measured on the untrained model (validate_before_fit)."""
    initial = {k.removeprefix("initial/"): v for k, v in metrics.items() if k.startswith("initial/")}
    final = {k: v for k, v in metrics.items() if not k.startswith("initial/") and "/" in k and "loss" not in k}
    if initial:
        print("\nmetric                 untrained   trained")
        for k, v in sorted(initial.items()):
            if k in metrics:
                print(f"{k:<22} {v:9.4f} {metrics[k]:9.4f}")
    print("\nfinal metrics:")
    for k, v in sorted(final.items()):
        print(f"  {k}: {v:.4f}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.output_dir  # resolve ${hydra:...} while Hydra is alive
    metrics, _ = train(cfg)
    value = optimized_value(cfg, metrics)
    log.info("Final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    print_summary(metrics)
    return value


if __name__ == "__main__":
    main()
