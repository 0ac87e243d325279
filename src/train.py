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
from src.utils.model_selection import choose_returned, save_initial  # noqa: E402
from src.utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from src.utils.run_dirs import SUMMARY  # noqa: E402
from src.utils.wandb_resume import WANDB_ID_FILE, prepare_wandb_resume  # noqa: E402

log = logging.getLogger(__name__)


def _instantiate_dict(node: DictConfig | None) -> list:
    return [instantiate(v) for v in (node or {}).values() if v is not None and "_target_" in v]


# Callbacks that raise without a logger (Lightning's LearningRateMonitor); dropped when the run has none.
NEEDS_LOGGER = ("LearningRateMonitor",)


def _drop_logger_callbacks(callbacks: list, loggers: list) -> list:
    if loggers:
        return callbacks
    dropped = [type(c).__name__ for c in callbacks if type(c).__name__ in NEEDS_LOGGER]
    if dropped:
        log.warning("No logger configured: dropping %s (it needs a logger)", ", ".join(dropped))
    return [c for c in callbacks if type(c).__name__ not in NEEDS_LOGGER]


def _infer_num_classes(cfg: DictConfig, datamodule) -> None:
    """`data.num_classes: null` (own data): read it from the training data before the model is built, so the
    model config's `${data.num_classes}` interpolations resolve to it."""
    wanted = "num_classes" in cfg.data and cfg.data.num_classes is None
    if not wanted or not hasattr(datamodule, "infer_num_classes"):
        return
    datamodule.prepare_data()
    n = datamodule.infer_num_classes()
    with open_dict(cfg):
        cfg.data.num_classes = n
    log.info("data.num_classes read from the training data: %d", n)


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
    _infer_num_classes(cfg, datamodule)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model)
    loggers = _instantiate_dict(cfg.get("logger"))
    callbacks = _drop_logger_callbacks(_instantiate_dict(cfg.get("callbacks")), loggers)
    callbacks.append(StoreConfigInCheckpoint(cfg))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(resolved))
    for lg in loggers:
        lg.log_hyperparams(resolved)
        if type(lg).__name__ == "WandbLogger":
            atomic_write_text(output_dir / WANDB_ID_FILE, lg.version + "\n")

    metrics: dict[str, float] = {}
    initial_ckpt, initial_score = None, None
    monitor, mode = cfg.get("monitor_metric"), cfg.get("monitor_mode", "max")
    if cfg.get("validate_before_fit") and not cfg.get("ckpt_path"):
        trainer.validate(model=model, datamodule=datamodule, verbose=False)
        initial = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        metrics.update({f"initial/{k}": v for k, v in initial.items()})
        if cfg.get("test", True) and cfg.get("test_before_fit"):  # the untrained model on test, for reports
            trainer.test(model=model, datamodule=datamodule, verbose=False)
            metrics.update({f"initial/{k}": float(v) for k, v in trainer.callback_metrics.items()
                            if k.startswith("test/")})
        ckpt_cb = trainer.checkpoint_callback
        if cfg.select_initial and monitor in initial and ckpt_cb is not None and ckpt_cb.dirpath:
            initial_ckpt, initial_score = save_initial(trainer, ckpt_cb.dirpath), initial[monitor]
    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_as_float_dict(trainer.callback_metrics))
        for cb in callbacks:  # reference numbers measured on the same splits (zero-shot, linear probe)
            metrics.update(getattr(cb, "report_metrics", {}))
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    best, selected = choose_returned(best, getattr(ckpt_cb, "best_model_score", None), initial_ckpt,
                                     initial_score, monitor, mode)
    if best is not None and cfg.get("train", True):
        # The table shows the returned model's validation metrics, not the last epoch's.
        trainer.validate(model=model, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    if cfg.get("test", True):
        if best is None:
            log.warning("No best checkpoint (fast_dev_run or no monitor); testing the current weights")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best)
        metrics.update(_as_float_dict(trainer.callback_metrics))

    summary = {
        "best_ckpt_path": best,
        "selected": selected,  # "initial" when no epoch beat the starting weights on validation
        "last_ckpt_path": getattr(ckpt_cb, "last_model_path", None) or None,
        "metrics": metrics,
        "optimized_metric": cfg.get("optimized_metric"),
    }
    if trainer.is_global_zero:
        atomic_write_json(output_dir / SUMMARY, summary)
    _finish_wandb(loggers)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "callbacks": callbacks,
               "loggers": loggers, "selected": selected}
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


# Reference columns printed before the returned model's: a linear model on raw pixels (classification), plain
# pretrained features (kNN), a linear probe on them, and the platform model before training (validate_before_fit).
BASELINES = (("pixel_logreg", "pixel LR"), ("zero_shot", "zero-shot"), ("linear_probe", "lin. probe"),
             ("initial", "start"))


HEADLINE = ("recall@1", "recall@5", "map@r", "acc", "f1", "map", "map_50")  # f1: classification macro-F1


def print_summary(metrics: dict[str, float], selected: str = "trained") -> None:
    """One row per val/test metric: the baselines that were measured, then the returned model's value."""
    final = {k: v for k, v in metrics.items() if k.split("/")[0] in ("val", "test") and "loss" not in k}
    headline = {k: v for k, v in final.items() if k.split("/", 1)[1] in HEADLINE}
    final = headline or final
    cols = [(prefix, title) for prefix, title in BASELINES if any(k.startswith(prefix + "/") for k in metrics)]
    returned = "returned" + (" (=start)" if selected == "initial" else "")
    print("\n" + f"{'metric':<22}" + "".join(f"{t:>12}" for _, t in cols) + f"{returned:>18}")
    for k, v in sorted(final.items()):
        cells = "".join(f"{metrics[f'{p}/{k}']:12.4f}" if f"{p}/{k}" in metrics else f"{'':>12}" for p, _ in cols)
        print(f"{k:<22}{cells}{v:18.4f}")
    if selected == "initial":
        print("No epoch beat the starting weights on validation: the run returns the starting model.")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.output_dir  # resolve ${hydra:...} while Hydra is alive
    metrics, objects = train(cfg)
    value = optimized_value(cfg, metrics)
    log.info("Final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    print_summary(metrics, objects["selected"])
    return value


if __name__ == "__main__":
    main()
