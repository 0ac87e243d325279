"""Model selection counts the starting weights: a fine-tuning run that only hurts returns the pretrained model,
says so, and its reported numbers are the zero-shot ones; the baselines sit beside it in the summary."""

import json
from pathlib import Path

import pytest
import torch

from src.train import print_summary, train
from src.utils.model_selection import INITIAL_CKPT, choose_returned, improves
from src.utils.run_dirs import SUMMARY

LITE0_TINY = ["experiment=lite0_retail", "data.image_size=32", "data.batch_sampler.pk=[4,4]",
              "callbacks.baselines.probe_steps=20"]


@pytest.mark.numeric
def test_destructive_learning_rate_returns_the_zero_shot_model(make_cfg, capsys):
    cfg = make_cfg([*LITE0_TINY, "model.optimizer.lr=50", "model.backbone_lr_mult=1.0",
                    "callbacks.backbone_warmup.epochs=0", "trainer.max_epochs=2"])
    metrics, objects = train(cfg)
    assert objects["selected"] == "initial"
    summary = json.loads((Path(cfg.paths.output_dir) / SUMMARY).read_text())
    assert summary["selected"] == "initial" and summary["best_ckpt_path"].endswith(INITIAL_CKPT)
    # Step 0 is the plain pooled ImageNet features (identity neck, average pooling): the returned model's
    # numbers are the zero-shot ones, on val and on test.
    for split in ("val", "test"):
        assert metrics[f"{split}/recall@1"] == pytest.approx(metrics[f"zero_shot/{split}/recall@1"], abs=0.01)
    for split in ("val", "test"):  # the untrained platform model is the plain pooled features
        assert metrics[f"initial/{split}/recall@1"] == pytest.approx(metrics[f"zero_shot/{split}/recall@1"], abs=0.01)
    assert "linear_probe/test/recall@1" in metrics
    print_summary(metrics, objects["selected"])
    out = capsys.readouterr().out
    assert "zero-shot" in out and "lin. probe" in out and "returns the starting model" in out


@pytest.mark.parametrize("score, reference, mode, expected", [
    (0.5, 0.4, "max", True), (0.4, 0.4, "max", False), (0.3, 0.4, "min", True), (None, 0.4, "max", False),
    (float("nan"), 0.4, "max", False)])
def test_improves_is_strict(score, reference, mode, expected):
    assert improves(score, reference, mode) is expected


def test_choose_returned_prefers_a_strictly_better_epoch(tmp_path):
    initial = tmp_path / INITIAL_CKPT
    initial.write_text("x")
    assert choose_returned("best.ckpt", 0.4, initial, 0.4, "val/recall@1", "max") == (str(initial), "initial")
    assert choose_returned("best.ckpt", 0.41, initial, 0.4, "val/recall@1", "max") == ("best.ckpt", "trained")
    assert not initial.exists()  # the unused starting checkpoint is removed
    assert choose_returned("best.ckpt", 0.1, None, None, "val/recall@1", "max") == ("best.ckpt", "trained")


@pytest.mark.numeric
def test_fine_tuning_starts_from_the_linear_probe(make_cfg):
    # LP-FT: the probe's map is written into the model's (fixed) neck before training, so the frozen-backbone
    # warm-up epoch embeds with the probe: its val recall@1 is the probe's (up to GeM's p, which the warm-up trains).
    cfg = make_cfg([*LITE0_TINY, "trainer.max_epochs=1", "callbacks.baselines.probe_steps=30",
                    "+callbacks.baselines.probe_eval_every=5"])
    metrics, objects = train(cfg)
    probe = next(c for c in objects["callbacks"] if type(c).__name__ == "PretrainedBaselines").probe_neck
    neck = objects["model"].net.neck.fc.weight.detach().cpu()
    assert not torch.equal(probe.fc.weight, torch.eye(probe.fc.weight.shape[0]))  # the probe moved: not vacuous
    torch.testing.assert_close(neck, probe.fc.weight.detach(), atol=0, rtol=0)
    assert metrics["val/recall@1"] == pytest.approx(metrics["linear_probe/val/recall@1"], abs=0.05)


def test_probe_into_a_neck_of_another_shape_names_the_keys():
    from src.callbacks.baselines import PretrainedBaselines
    from src.nn.necks import LinearNeck

    with pytest.raises(ValueError, match="model.net.embedding_dim"):
        PretrainedBaselines._write_probe_into(LinearNeck(8, 4, init="orthogonal"), torch.eye(8))
