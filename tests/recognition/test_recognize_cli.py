"""`python -m src.recognize` subcommands in-process, on a tiny random-weight checkpoint (plumbing, not accuracy)."""

from __future__ import annotations

import json

import pytest

from src.data.retail_world import photometric as ph
from src.recognize import build_parser, live_config, main, parse_frames
from src.retrieval.index import GalleryIndex
from tests.recognition.conftest import FAMILY_HEADS
from tests.recognition.helpers import counter_photo, studio_shot
from tests.recognition.test_gallery import write_list


def run(capsys, *argv):
    main([str(a) for a in argv])
    return json.loads(capsys.readouterr().out)


def test_build_add_remove_search_checkout(tmp_path, tiny_ckpt, capsys):
    lst = write_list(tmp_path, FAMILY_HEADS[:4])
    val = write_list(tmp_path, FAMILY_HEADS[:4], name="val.txt", views=2)
    index = tmp_path / "index"
    common = ["--index", index, "--embedder", tiny_ckpt]
    out = run(capsys, "build", *common, "--images", lst, "--root", tmp_path, "--catalogue", tmp_path / "catalogue.json",
              "--val-images", val, "--val-root", tmp_path, "--target-far", 0.5)
    assert out["images"] == 4 and out["products"] == 4 and 0 <= out["threshold"]["far"] <= 0.5
    loaded = GalleryIndex.load(index)
    assert len(loaded) == 4 and loaded.threshold == out["threshold"]["threshold"]
    assert loaded.metadata(0)["name"] == FAMILY_HEADS[0].name

    with pytest.raises(SystemExit, match="already holds a gallery"):
        main(["build", *map(str, common), "--images", str(lst), "--root", str(tmp_path)])

    photo = tmp_path / "new.jpg"
    photo.write_bytes(ph.jpeg_bytes(studio_shot(FAMILY_HEADS[5]), 95))
    out = run(capsys, "add", *common, "--image", photo, "--sku", "new-1", "--name", "New thing", "--price", 2.5)
    assert out == {"added": 1, "skipped": 0, "count": 5, "prices_changed": []}
    assert run(capsys, "add", *common, "--image", photo, "--sku", "new-1")["added"] == 0  # known image: not re-embedded

    counter = tmp_path / "counter.jpg"
    counter.write_bytes(ph.jpeg_bytes(counter_photo(FAMILY_HEADS[:2], 0)[0], 95))
    rec = run(capsys, "search", *common, "--image", counter, "--whole-image", "always", "--k", 3)
    assert rec["width"] == 320 and set(rec) >= {"items", "unknown", "timings"}
    receipt = run(capsys, "checkout", *common, "--image", counter)
    assert set(receipt) >= {"items", "unknown", "total", "complete"}

    assert run(capsys, "remove", "--index", index, "--sku", "new-1") == {"removed": 1, "count": 4}
    with pytest.raises(SystemExit, match="no image of sku"):
        main(["remove", "--index", str(index), "--sku", "new-1"])
    out = run(capsys, "calibrate", *common, "--val-images", val, "--val-root", tmp_path, "--target-far", 0.25)
    assert GalleryIndex.load(index).threshold == out["threshold"] and "margin" not in out
    out = run(capsys, "calibrate", *common, "--val-images", val, "--val-root", tmp_path, "--target-far", 0.25,
              "--target-wrong", 0.1)
    assert GalleryIndex.load(index).margin == out["margin"]["margin"] >= 0


def test_match_live_command(tmp_path, tiny_ckpt, capsys):
    from src.data.retail_world.live import ensure_live
    from tests.recognition.test_live import SPEC

    root = ensure_live(tmp_path / "live", SPEC)
    out = run(capsys, "match-live", "--embedder", tiny_ckpt, "--data", root, "--out", tmp_path / "result.json",
              "--oracle-boxes", "--frames", "auto", "--video-short-side", 0)
    assert (tmp_path / "result.json").is_file() and out["frames"] == 4 * 13
    assert set(out["score"]) >= {"match_f1", "box_accuracy"}
    with pytest.raises(SystemExit, match="--detector CKPT or --oracle-boxes"):
        main(["match-live", "--embedder", str(tiny_ckpt), "--data", str(root), "--out", str(tmp_path / "r.json")])


def test_parse_frames():
    assert parse_frames("80:381:20")[:3] == [80, 100, 120] and parse_frames("3,9") == [3, 9]
    assert parse_frames("auto") == "auto"
    with pytest.raises(Exception, match="--frames"):
        parse_frames("x:y")


def test_match_live_defaults_are_the_recipe():
    args = build_parser().parse_args(["match-live", "--embedder", "e.ckpt", "--data", "d", "--out", "r.json"])
    assert args.frames == list(range(80, 381, 20))  # 80, 100, ..., 380
    assert (args.video_short_side, args.image_short_side) == (608, 0)
    assert (args.keep_ratio, args.top_fraction, args.max_distance) == (0.28, 0.5, 1.12)
    assert (args.strategy, args.fallback) == ("per_folder", "none")
    assert (args.image_threshold, args.video_threshold) == (None, None)  # the detector's stored ones, else below

    from src.detect import DEFAULTS
    from src.recognition.live import LiveConfig

    cfg = live_config(args)  # no detector recipe: the built-in thresholds, the same as src.detect's
    assert (cfg.image_box_threshold, cfg.video_box_threshold) == (0.9, 0.95)
    assert (DEFAULTS["score_threshold_image"], DEFAULTS["score_threshold_video"]) == (0.9, 0.95)
    default = LiveConfig()
    assert list(cfg.frame_indices) == list(default.frame_indices)
    assert {k: v for k, v in vars(cfg).items() if k != "frame_indices"} == \
        {k: v for k, v in vars(default).items() if k != "frame_indices"}


def test_match_live_thresholds_come_from_the_detector_recipe_unless_given():
    parse = build_parser().parse_args
    base = ["match-live", "--embedder", "e.ckpt", "--data", "d", "--out", "r.json"]
    recipe = {"score_threshold_image": 0.8, "score_threshold_video": 0.85, "image_short_side": 608}
    cfg = live_config(parse(base), recipe)
    assert (cfg.image_box_threshold, cfg.video_box_threshold) == (0.8, 0.85)
    cfg = live_config(parse(base + ["--image-threshold", "0.7"]), recipe)
    assert (cfg.image_box_threshold, cfg.video_box_threshold) == (0.7, 0.85)
    cfg = live_config(parse(base + ["--strategy", "per_video", "--fallback", "top1", "--keep-ratio", "0.5",
                                    "--top-fraction", "1", "--max-distance", "2", "--frames", "3,9",
                                    "--video-short-side", "0"]))
    assert (cfg.strategy, cfg.fallback, cfg.keep_ratio, cfg.top_fraction, cfg.max_distance) == \
        ("per_video", "top1", 0.5, 1.0, 2.0)
    assert cfg.frame_indices == [3, 9] and cfg.video_short_side is None
    with pytest.raises(SystemExit):  # argparse: not a strategy
        parse(base + ["--strategy", "per_item"])
    with pytest.raises(ValueError, match="image_box_threshold must be in"):
        live_config(parse(base + ["--image-threshold", "1.5"]))


def test_the_commands_on_a_milvus_collection(tmp_path, tiny_ckpt, capsys):
    pytest.importorskip("milvus_lite")
    from src.retrieval.milvus_audit import MilvusAuditLog
    from src.retrieval.milvus_index import MilvusGalleryIndex

    lst = write_list(tmp_path, FAMILY_HEADS[:4])
    val = write_list(tmp_path, FAMILY_HEADS[:4], name="val.txt", views=2)
    uri = f"{tmp_path / 'shop.db'}#store_1"
    common = ["--index", uri, "--embedder", tiny_ckpt]
    out = run(capsys, "build", *common, "--images", lst, "--root", tmp_path, "--catalogue", tmp_path / "catalogue.json",
              "--val-images", val, "--val-root", tmp_path, "--target-far", 0.5)
    assert out["images"] == 4 and out["products"] == 4 and out["added"] == 4
    with pytest.raises(SystemExit, match="already holds 4 images"):
        main(["build", *map(str, common), "--images", str(lst), "--root", str(tmp_path)])
    counter = tmp_path / "counter.jpg"
    counter.write_bytes(ph.jpeg_bytes(counter_photo(FAMILY_HEADS[:2], 0)[0], 95))
    assert set(run(capsys, "checkout", *common, "--image", counter)) >= {"items", "unknown", "total", "complete"}
    assert run(capsys, "remove", "--index", uri, "--sku", str(FAMILY_HEADS[0].sku_id)) == {"removed": 1, "count": 3}
    with MilvusGalleryIndex.open(uri) as index:
        assert len(index) == 3 and index.threshold == out["threshold"]["threshold"]
    total, rows = MilvusAuditLog(uri).read()
    assert total == 6 and rows[0]["action"] == "remove" and rows[0]["key_id"] == "cli"  # 4 adds, threshold, remove
