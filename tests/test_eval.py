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


def test_report_shows_the_run_baselines_beside_the_model(tmp_path):
    from src.eval import render_report, run_baselines

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "train_summary.json").write_text(json.dumps({"metrics": {
        "pixel_logreg/test/acc": 0.84, "pixel_logreg/val/acc": 0.85, "test/acc": 0.93, "linear_probe/test/f1": 0.7}}))
    ckpt = run / "checkpoints" / "epoch011.ckpt"
    baselines = run_baselines(ckpt)
    assert baselines == {"pixel_logreg": {"test/acc": 0.84}, "linear_probe": {"test/f1": 0.7}}
    report = render_report(ckpt, {"test/acc": 0.9312, "test/f1": 0.93}, [], tmp_path, baselines)
    assert "| metric | pixel_logreg | linear_probe | model |" in report
    assert "| test/acc | 0.8400 |  | 0.9312 |" in report
    assert run_baselines(tmp_path / "elsewhere" / "x.ckpt") == {}  # a checkpoint outside a run: no columns
    assert "| test/acc | 0.9312 |" in render_report(ckpt, {"test/acc": 0.9312}, [], tmp_path)
