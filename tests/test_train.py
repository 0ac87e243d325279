"""The training entry point end to end on tiny generated data."""

import json

import csv
import pytest
import torch

from src.train import train
from src.utils.run_dirs import SUMMARY

FAST = ["data.image_size=32", "model.net.model_name=resnet18", "data.batch_size=8"]


def test_fast_dev_run(make_cfg):
    cfg = make_cfg(["experiment=sku_classifier", "++trainer.fast_dev_run=true", *FAST])
    metrics, objects = train(cfg)
    assert "test/acc" in metrics and 0.0 <= metrics["test/acc"] <= 1.0
    assert objects["trainer"].fast_dev_run


def test_short_run_loss_falls_and_summary_written(make_cfg):
    cfg = make_cfg(["experiment=sku_classifier", "trainer.max_epochs=6", "callbacks=none", "logger=csv",
                    "model.optimizer.lr=3e-3", "trainer.log_every_n_steps=1", *FAST])
    metrics, objects = train(cfg)
    out = objects["trainer"].logger.log_dir
    with open(f"{out}/metrics.csv") as fh:
        losses = [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    assert len(losses) >= 4
    # Mean of the last steps well below the first ones: it learns (measured ~2.6 -> ~1.5 here).
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
    with open(f"{cfg.paths.output_dir}/{SUMMARY}") as fh:
        summary = json.load(fh)
    assert summary["optimized_metric"] == "test/acc" and summary["metrics"]["test/acc"] == metrics["test/acc"]
    with open(f"{cfg.paths.output_dir}/config_resolved.yaml") as fh:
        assert f"data_dir: {cfg.paths.data_dir}" in fh.read()  # interpolations resolved
    assert objects["cfg"] is cfg


def _final_state(ckpt_path):
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    opt_steps = [s["step"] for s in ckpt["optimizer_states"][0]["state"].values()]
    return ckpt["epoch"], ckpt["global_step"], float(opt_steps[0]), ckpt["lr_schedulers"][0]["last_epoch"]


def test_killed_run_resumes_to_same_state(make_cfg, tmp_path):
    """A run stopped after epoch 1 and resumed with ckpt_path ends where an uninterrupted run ends."""
    common = ["experiment=sku_classifier", "callbacks=default", "callbacks.early_stopping=null",
              "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false", *FAST]
    full = make_cfg([*common, "trainer.max_epochs=3"])
    train(full)
    killed = make_cfg([*common, "trainer.max_epochs=1"])
    killed.paths.output_dir = str(tmp_path / "killed")
    train(killed)
    last = tmp_path / "killed/checkpoints/last.ckpt"
    assert last.is_file()
    resumed = make_cfg([*common, "trainer.max_epochs=3", f"ckpt_path={last}"])
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    a = _final_state(f"{full.paths.output_dir}/checkpoints/last.ckpt")
    b = _final_state(tmp_path / "resumed/checkpoints/last.ckpt")
    assert a == b and a[1] == 9  # same epoch, global step, optimizer step count and scheduler position


def test_unknown_config_key_fails_loudly(make_cfg):
    cfg = make_cfg(["experiment=sku_classifier", "++model.not_a_parameter=1", *FAST])
    with pytest.raises(Exception, match="not_a_parameter"):
        train(cfg)


def test_label_outside_num_classes_is_a_clear_error(make_cfg):
    cfg = make_cfg(["experiment=sku_classifier", "data.num_classes=5", "model.num_classes=5",
                    "++trainer.fast_dev_run=true", *FAST])
    with pytest.raises(ValueError, match=r"train\.txt: label \d+ .* >= data.num_classes=5"):
        train(cfg)
