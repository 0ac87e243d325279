"""A W&B run without an API key goes offline and holds the logged metrics and the config (read back offline)."""

import json
import subprocess
from pathlib import Path

from src.train import train

WANDB = str(Path(__file__).resolve().parents[1] / ".venv/bin/wandb")


def test_offline_run_holds_metric_and_config(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = make_cfg(["experiment=sku_classifier", "logger=wandb", "trainer.max_epochs=1",
                    "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1", "data.image_size=32",
                    "data.batch_size=8", "tags=[wandb_test]"])
    metrics, _ = train(cfg)
    runs = list(Path(cfg.paths.output_dir).glob("wandb/offline-run-*"))
    assert len(runs) == 1, runs
    run = json.loads(subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(runs[0])],
                                    capture_output=True, text=True, check=True).stdout)
    assert run["state"] == "finished" and run["tags"] == ["wandb_test"] and run["project"] == "retail-recognition"
    assert abs(run["summary"]["test/acc"] - metrics["test/acc"]) < 1e-6
    assert "train/loss" in run["summary"]
    # The whole Hydra config was logged as hyperparameters.
    assert run["config"]["data"]["source"]["num_families"] == cfg.data.source.num_families
    assert run["config"]["model"]["net"]["model_name"] == cfg.model.net.model_name
