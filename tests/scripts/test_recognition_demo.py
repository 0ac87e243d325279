"""scripts/recognition_demo.py: which checkpoint a run directory stands for (moved runs included)."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tests.script_loader import load_script

EMB, DET = "src.models.embedding.EmbeddingSystem", "src.models.detection.DetectionSystem"


def script():
    return load_script("recognition_demo")  # it imports its sibling eval_checkout


def fake_run(run: Path, target: str, best: str, recorded_root: Path | None = None) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / best).write_bytes(b"ckpt")
    OmegaConf.save({"model": {"_target_": target}}, run / "config_resolved.yaml")
    recorded = (recorded_root or run) / "checkpoints" / best
    (run / "train_summary.json").write_text(json.dumps({"best_ckpt_path": str(recorded), "last_ckpt_path": None}))
    return run / "checkpoints" / best


def test_run_directory_stands_for_its_best_checkpoint_even_when_moved(tmp_path):
    demo = script()
    emb = fake_run(tmp_path / "outputs" / "emb", EMB, "epoch006.ckpt")
    det = fake_run(tmp_path / "outputs" / "det", DET, "epoch005.ckpt", recorded_root=tmp_path / "gone")
    assert demo.checkpoint(str(tmp_path / "outputs" / "emb"), tmp_path, EMB) == emb
    assert demo.checkpoint(str(tmp_path / "outputs" / "det"), tmp_path, DET) == det  # recorded path moved away
    assert demo.checkpoint(str(emb), tmp_path, EMB) == emb  # a file is taken as is
    assert demo.checkpoint(None, tmp_path / "outputs", DET) == det  # newest run of that model type
    with pytest.raises(SystemExit, match="not a checkpoint nor a finished run of DetectionSystem"):
        demo.checkpoint(str(tmp_path / "outputs" / "emb"), tmp_path, DET)
