import json

from src.eval import evaluate
from src.train import train
from tests.conftest import compose_cfg


def test_eval_writes_metrics_and_report(make_cfg, tmp_path, data_dir):
    cfg = make_cfg(["experiment=sku_classifier", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                    "data.image_size=32", "data.batch_size=8"])
    metrics, _ = train(cfg)
    ecfg = compose_cfg("eval", ["ckpt_path=latest"], tmp_path / "eval", data_dir)
    ecfg.paths.outputs_dir = str(tmp_path)  # where `latest` looks for finished runs
    emetrics, objects = evaluate(ecfg)
    assert abs(emetrics["test/acc"] - metrics["test/acc"]) < 1e-6  # same best checkpoint, same test set
    written = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert written["metrics"]["test/acc"] == emetrics["test/acc"]
    report = (tmp_path / "eval/report.md").read_text()
    assert "test/acc" in report and str(objects["ckpt"]) in report
