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


@pytest.mark.numeric
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


@pytest.mark.parametrize("logger", ["logger=none", "~logger"])
def test_other_ways_to_say_no_logger_compose_to_none(make_cfg, logger):
    from src.train import _instantiate_dict

    assert _instantiate_dict(make_cfg(["experiment=demo_retrieval", logger]).get("logger")) == []


def test_no_logger_trains_and_table_shows_returned_checkpoint(make_cfg, capsys):
    """`logger=[]` trains (LearningRateMonitor is dropped with a warning), and the val metrics reported are
    those of the checkpoint the run returns (re-validated), not the last epoch's."""
    from src.train import print_summary

    cfg = make_cfg(["experiment=demo_retrieval", "logger=[]", "trainer.max_epochs=2",
                    "data.image_size=32", "data.batch_sampler.pk=[4,4]", "test=false"])
    metrics, objects = train(cfg)
    assert objects["loggers"] == [] and not any(type(c).__name__ == "LearningRateMonitor"
                                                for c in objects["trainer"].callbacks)
    cb = objects["trainer"].checkpoint_callback
    if objects["selected"] == "trained":  # the reported val metric is the returned checkpoint's score
        assert metrics[cfg.monitor_metric] == pytest.approx(float(cb.best_model_score), abs=1e-6)
    else:
        assert metrics[cfg.monitor_metric] == pytest.approx(metrics["initial/" + cfg.monitor_metric], abs=1e-6)
    print_summary(metrics, objects["selected"])
    assert "returned" in capsys.readouterr().out
