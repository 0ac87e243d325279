"""Hydra multirun: the basic sweeper and a 2-trial Optuna study on the tiny config, as users run them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_WORLD_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=sku_classifier", "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.image_size=32", "data.batch_size=8",
        "model.net.model_name=resnet18", "callbacks.progress_bar=null", *TINY_WORLD_OVERRIDES]


def _run(args, tmp_path, data_dir):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, "-m", "src.train", "-m", *args, *TINY, f"paths.outputs_dir={tmp_path}",
           f"paths.data_dir={data_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_basic_sweep_runs_each_job_and_reports_best(tmp_path, data_dir):
    _run(["model.optimizer.lr=1e-3,3e-3"], tmp_path, data_dir)
    (multirun,) = list(tmp_path.glob("train/multirun/*/*"))
    sys.path.insert(0, str(ROOT / "scripts"))
    from sweep_summary import best, collect

    rows = collect(multirun)
    assert len(rows) == 2 and all(r["metric"] == "test/acc" and r["value"] is not None for r in rows)
    assert best(rows)["value"] == max(r["value"] for r in rows)
    assert {tuple(r["overrides"])[0] for r in rows} == {"model.optimizer.lr=0.001", "model.optimizer.lr=0.003"}


@pytest.mark.slow
def test_optuna_two_trials(tmp_path, data_dir):
    _run(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"],
         tmp_path, data_dir)
    (results,) = list(tmp_path.glob("train/multirun/*/*/optimization_results.yaml"))
    res = yaml.safe_load(results.read_text())
    assert set(res["best_params"]) == {"model.optimizer.lr", "model.optimizer.weight_decay"}
    assert 0.0 <= res["best_value"] <= 1.0
    assert len(list(results.parent.glob("*/train_summary.json"))) == 2
