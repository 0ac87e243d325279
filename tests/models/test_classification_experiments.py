"""Every classification experiment composes and runs (fast_dev_run, tiny images); the style baseline's
averaged checkpoint is evaluated through src.eval, which writes the report pictures."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from src.data.fashion_mnist import DEFAULT_RAW_DIR
from src.data.readers import read_image_list
from src.eval import evaluate
from src.train import train
from src.utils import resolvers  # noqa: F401
from tests.script_loader import load_script

CONF = str(Path(__file__).resolve().parents[2] / "conf")
TINY_STYLE = ["+data.source.num_train=42", "+data.source.num_val=14", "+data.source.num_test=14",
              "data.image_size=32", "data.batch_size=4"]
# A retail world of 4 training SKUs (generated in ~1 s instead of the default world's ~30 s).
TINY_RETAIL = ["+data.source.num_families=4", "+data.source.num_train_skus=4", "+data.source.train_views=2",
               "+data.source.val_views=1", "+data.source.gallery_views=1", "+data.source.query_views=1",
               "+data.source.train_scenes=1", "+data.source.val_scenes=1", "data.num_classes=4"]
QUIET = ["logger=csv", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
         "+trainer.enable_model_summary=false", "trainer.accelerator=cpu", "trainer.devices=1",
         "trainer.precision=32-true"]


def cfg_for(experiment, out, data_dir, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.output_dir={out}",
                                          f"paths.data_dir={data_dir}", *QUIET, *overrides])
    return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data_dir):
    """mnv3s_style_cutmix for 2 tiny epochs: checkpoints (incl. avg_last2.ckpt) for the tests below."""
    out = tmp_path_factory.mktemp("cutmix")
    cfg = cfg_for("mnv3s_style_cutmix", out, data_dir, *TINY_STYLE, "trainer.max_epochs=2",
                  "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")
    metrics, objects = train(cfg)
    return out, metrics, objects


def test_style_cutmix_trains_averages_and_evaluates(baseline, tmp_path):
    out, metrics, objects = baseline
    assert {"test/acc", "test/f1", "train/loss"} <= set(metrics)
    assert objects["datamodule"].sampler_factory is not None and objects["model"].batch_mix is not None
    avg = out / "checkpoints" / "avg_last2.ckpt"
    assert avg.is_file()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={avg}", f"paths.output_dir={tmp_path}",
                                         f"report_dir={tmp_path}", "+model_overrides.tta_hflip=true",
                                         "+data_overrides.batch_size=4"])
    eval_metrics, _ = evaluate(cfg)
    assert "test/acc" in eval_metrics
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "per_class_recall.png").is_file()
    assert "confusion_matrix.png" in (tmp_path / "report.md").read_text()


def fast(experiment, tmp_path, data_dir, *overrides):
    cfg = cfg_for(experiment, tmp_path, data_dir, "trainer.fast_dev_run=true", *overrides)
    return train(cfg)


def test_effb1_teacher(tmp_path, data_dir):
    metrics, objects = fast("effb1_style_teacher", tmp_path, data_dir, *TINY_STYLE)
    assert type(objects["model"].net).__name__ == "EfficientNet" and "test/acc" in metrics


def test_kd_student_with_teacher_from_checkpoint(baseline, tmp_path, data_dir):
    teacher_ckpt = baseline[0] / "checkpoints" / "last.ckpt"
    metrics, objects = fast("mnv3s_style_kd", tmp_path, data_dir, *TINY_STYLE, f"model.teacher.ckpt_path={teacher_ckpt}")
    assert objects["model"].teacher is not None and not objects["model"].teacher.training
    assert {"train/loss_kd", "train/loss_ce", "train/loss"} <= set(metrics)


def test_kd_without_teacher_path_fails_clearly(tmp_path, data_dir):
    with pytest.raises(Exception, match="ckpt_path"):
        fast("mnv3s_style_kd", tmp_path, data_dir, *TINY_STYLE)


def test_oof_fold_writes_heldout_predictions_and_student_uses_them(tmp_path, data_dir):
    fast("mnv3s_style_oof_fold", tmp_path / "fold1", data_dir, *TINY_STYLE, "data.fold=1", "data.batch_size=64")
    z = np.load(tmp_path / "fold1" / "predictions" / "test_probs.npz")
    assert len(z["uids"]) == 14 and np.allclose(z["probs"].sum(1), 1, atol=1e-5)  # a third of 42, all of it
    # A soft-label file covering the train list (the real one comes from scripts/gather_oof.py).
    from src.data.style_world import StyleWorld

    root = StyleWorld(str(data_dir / "style_world"), num_train=42, num_val=14, num_test=14).root
    uids = [s.uid for s in read_image_list(root / "lists" / "train.txt", root)]
    soft = tmp_path / "soft.npz"
    np.savez(soft, uids=np.array(uids), probs=np.full((len(uids), 7), 1 / 7))
    metrics, objects = fast("mnv3s_style_oof", tmp_path / "student", data_dir, *TINY_STYLE,
                            f"data.soft_labels={soft}")
    assert objects["datamodule"].soft_weight == 0.2 and "train/loss" in metrics


@pytest.mark.parametrize("experiment", ["resnest101_aliproducts", "effb5_aliproducts"])
def test_aliproducts_recipes_on_the_retail_world(experiment, tmp_path, data_dir):
    metrics, objects = fast(experiment, tmp_path, data_dir, "data=retail_sku", *TINY_RETAIL,
                            "data.image_size=32", "data.batch_size=2", "data.num_workers=0")
    assert type(objects["model"].optimizer_factory.func).__name__ == "function"  # the Ranger factory
    assert "test/acc" in metrics


def test_aliproducts_recipe_demands_a_data_root(tmp_path, data_dir):
    cfg = cfg_for("resnest101_aliproducts", tmp_path, data_dir)
    with pytest.raises(Exception, match="root"):
        train(cfg)


@pytest.mark.skipif(not Path(DEFAULT_RAW_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_fast_dev_run(tmp_path, data_dir):
    metrics, objects = fast("mnv3s_fashion_mnist", tmp_path, data_dir, "+data.source.train_per_class=2",
                            "+data.source.val_per_class=1", "+data.source.test_per_class=1", "data.batch_size=8")
    assert objects["model"].class_names[0] == "T-shirt/top" and "test/acc" in metrics


def _script(name):
    return load_script(name)


def test_ensemble_and_onnx_export_scripts_on_trained_checkpoints(baseline, tmp_path):
    ckpts = baseline[0] / "checkpoints"
    metrics = _script("eval_ensemble").main([str(ckpts / "last.ckpt"), str(ckpts / "avg_last2.ckpt"),
                                             "--out-dir", str(tmp_path / "ens"), "--tta-hflip"])
    assert "test/acc" in metrics and (tmp_path / "ens" / "confusion_matrix.png").is_file()
    out = _script("export_onnx").main([str(ckpts / "last.ckpt"), "--out", str(tmp_path / "m.onnx")])
    assert Path(out["onnx"]).is_file() and Path(out["settings"]).is_file() and out["kind"] == "classifier"
    assert out["max_abs_diff"] < 1e-3  # BN folded, ONNX Runtime vs eager logits
