"""src.detect on a tiny checkpoint written by train(cfg): COCO results that pycocotools loads, for a COCO file,
a folder of images (with crops) and a video; boxes in original pixels; settings from the checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.detect import detect
from src.models.detection import CATEGORIES_KEY
from src.train import train
from src.utils.checkpoint import load_system
from tests.conftest import TINY_WORLD_OVERRIDES, compose_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One optimizer step of the demo detector, then its checkpoint (config + categories inside)."""
    out = tmp_path_factory.mktemp("detect_train") / "run"
    cfg = compose_cfg("train", ["experiment=detection_demo", "trainer=cpu", "logger=csv", "trainer.max_epochs=1",
                                "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1", "test=false",
                                "callbacks.progress_bar=null", "trainer.log_every_n_steps=1",
                                *TINY_WORLD_OVERRIDES], out, data_dir)
    _, objects = train(cfg)
    ckpt = Path(objects["trainer"].checkpoint_callback.best_model_path)
    assert ckpt.is_file()
    root = Path(objects["datamodule"].source.root)
    return ckpt, root, data_dir


def _detect(ckpt, tmp_path, data_dir, *overrides):
    cfg = compose_cfg("detect", [f"ckpt_path={ckpt}", *overrides], tmp_path / "out", data_dir)
    return detect(cfg)


def test_checkpoint_carries_categories(trained):
    ckpt, _, _ = trained
    assert torch.load(ckpt, map_location="cpu", weights_only=True)[CATEGORIES_KEY] == [{"id": 1, "name": "product"}]
    system, _ = load_system(ckpt)  # restores them through on_load_checkpoint, as Lightning's own loading does
    assert system.categories == [{"id": 1, "name": "product"}]


def test_coco_input_results_load_and_evaluate_in_original_pixels(trained, tmp_path):
    ckpt, root, data_dir = trained
    ann = root / "annotations/scenes_val.json"
    out = _detect(ckpt, tmp_path, data_dir, f"input={ann}", f"image_root={root}", "score_threshold_image=0.0",
                  "image_short_side=120", "batch_size=2")
    assert out["score_threshold"] == 0.0 and out["num_detections"] > 0
    gt = COCO(str(ann))
    dt = gt.loadRes(out["results"])  # the contract: pycocotools reads our results file
    assert set(dt.getImgIds()) <= set(gt.getImgIds())
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert -1 <= ev.stats[0] <= 1
    boxes = np.array([d["bbox"] for d in json.loads(Path(out["results"]).read_text())])
    x2, y2 = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
    h, w = gt.dataset["images"][0]["height"], gt.dataset["images"][0]["width"]
    assert x2.max() <= w + 1e-3 and y2.max() <= h + 1e-3
    # The model saw images 120 px high (160 wide); boxes beyond x=200 exist only if mapped back to the photo.
    assert w > 200 and x2.max() > 200


def test_folder_input_with_crops_and_default_threshold(trained, tmp_path):
    ckpt, root, data_dir = trained
    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted((root / "images/scenes/val").glob("*.jpg"))[:2]:
        shutil.copy(src, folder / src.name)
    (folder / "notes.txt").write_text("not an image")
    out = _detect(ckpt, tmp_path, data_dir, f"input={folder}", "save_crops=true", "score_threshold_image=0.3")
    coco = COCO(out["images"])
    assert [im["file_name"] for im in coco.dataset["images"]] == sorted(p.name for p in folder.glob("*.jpg"))
    dt = coco.loadRes(out["results"]) if out["num_detections"] else None
    crops = json.loads(Path(out["crops"]).read_text())
    assert len(crops) == out["num_detections"]
    for c in crops:
        img = cv2.imread(str(Path(out["results"]).parent / c["file_name"]))
        assert img is not None and img.shape[0] >= 1 and c["score"] >= 0.3
    if dt is not None:
        assert min(a["score"] for a in dt.dataset["annotations"]) >= 0.3
    # Without a threshold on the command line: the built-in 0.9 (the demo checkpoint has no detect: section).
    assert _detect(ckpt, tmp_path, data_dir, f"input={folder}")["score_threshold"] == 0.9


def test_video_input_reads_chosen_frames(trained, tmp_path):
    ckpt, root, data_dir = trained
    video = tmp_path / "stream.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for src in sorted((root / "images/scenes/val").glob("*.jpg"))[:4]:
        writer.write(cv2.resize(cv2.imread(str(src)), (320, 240)))  # the writer drops frames of another size
    writer.release()
    out = _detect(ckpt, tmp_path, data_dir, f"input={video}", "video_frames=[1,3,50]", "score_threshold_video=0.0",
                  "video_short_side=120")
    coco = COCO(out["images"])
    assert [im["frame_index"] for im in coco.dataset["images"]] == [1, 3]  # frame 50 is past the end: skipped
    assert out["score_threshold"] == 0.0
    dt = coco.loadRes(out["results"])
    assert set(dt.getImgIds()) <= {2, 4}
    boxes = np.array([a["bbox"] for a in dt.dataset["annotations"]])
    assert (boxes[:, 0] + boxes[:, 2]).max() <= 320 + 1e-3


def test_bad_input_is_a_clear_error(trained, tmp_path):
    ckpt, _, data_dir = trained
    with pytest.raises(FileNotFoundError, match="input not found"):
        _detect(ckpt, tmp_path, data_dir, f"input={tmp_path / 'nothing'}")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a folder of images, a video"):
        _detect(ckpt, tmp_path, data_dir, f"input={tmp_path / 'a.txt'}")
    ann = tmp_path / "elsewhere.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 10, "height": 10}],
                               "annotations": [], "categories": [{"id": 1, "name": "p"}]}))
    with pytest.raises(FileNotFoundError, match=r"elsewhere\.json: 1 image\(s\) not found.*set image_root"):
        _detect(ckpt, tmp_path, data_dir, f"input={ann}")


def test_eval_entry_point_reports_map_and_picture(trained, tmp_path):
    """src.eval rebuilds the detector from the checkpoint alone and puts the test picture in its report."""
    from src.eval import evaluate

    ckpt, _, data_dir = trained
    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", f"report_dir={tmp_path / 'report'}",
                               "++trainer.enable_progress_bar=false"], tmp_path / "out", data_dir)
    metrics, objects = evaluate(cfg)
    assert {"test/map", "test/map_50", "test/map_small"} <= set(metrics)
    report = (tmp_path / "report/report.md").read_text()
    assert "test_detections.png" in report and (tmp_path / "report/test_detections.png").is_file()
