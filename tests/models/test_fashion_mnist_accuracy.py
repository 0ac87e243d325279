"""mnv3s_fashion_mnist trained briefly on a subset of the real Fashion-MNIST photos beats a measured accuracy
on the full real test split (10,000 images).

Measured (2026-11-24, this 2-core machine, seed 42, 1 thread): 3 epochs on 300 images per class, 32 px,
MobileNetV3-small from scratch, reached test/acc = 0.512 on the 10k test split (128 s wall, incl. the
conversion). The bar is MEASURED - SLACK = 0.36: a from-scratch model after ~140 optimizer steps is still on
the steep part of its curve, so thread count, kernel nondeterminism and data order move the result by several
points; 0.36 is still 3.6x chance (0.10), and a broken pipeline (labels shuffled, transforms wrong, eval in
train mode) stays near chance."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from src.data.fashion_mnist import DEFAULT_RAW_DIR
from src.train import train
from src.utils import resolvers  # noqa: F401

CONF = str(Path(__file__).resolve().parents[2] / "conf")
MEASURED = 0.512
SLACK = 0.15

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(DEFAULT_RAW_DIR).is_dir(), reason="dataset-fashion-mnist not installed")]


def test_brief_training_beats_measured_accuracy(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=mnv3s_fashion_mnist", f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}",
            "+data.source.train_per_class=300", "+data.source.val_per_class=50", "trainer.max_epochs=3",
            "data.batch_size=64", "logger=csv", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false"])
    metrics, objects = train(cfg)
    assert len(objects["datamodule"].datasets["test"]) == 10000  # the whole real test split
    assert metrics["test/acc"] > MEASURED - SLACK, metrics
