"""The real-data configs (image list, ImageFolder) and the retail-world category labels instantiate and read."""

from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from src.utils import resolvers  # noqa: F401

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def data_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/unused", *overrides]).data


def write_images(root, names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / n), np.full((8, 8, 3), 100, np.uint8))


def test_image_folder_config(tmp_path):
    write_images(tmp_path, ["train/cat/a.png", "train/dog/b.png", "val/cat/c.png", "val/dog/d.png"])
    dm = instantiate(data_cfg("data=image_folder", f"data.source.root={tmp_path}", "data.num_classes=2",
                              "data.image_size=8", "data.num_workers=0"))
    dm.prepare_data()
    dm.setup("fit")
    assert [s.label for s in dm.datasets["train"].samples] == [0, 1]
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8)


def test_image_list_config(tmp_path):
    write_images(tmp_path, ["i/a.jpg", "i/b.jpg"])
    (tmp_path / "train.txt").write_text("i/a.jpg 0 a\ni/b.jpg 1 b\n")
    dm = instantiate(data_cfg("data=image_list", f"data.source.root={tmp_path}", "data.train=train.txt",
                              "data.val=train.txt", "data.num_classes=2", "data.image_size=8", "data.num_workers=0"))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2


def test_retail_category_config_points_at_category_lists():
    cfg = data_cfg("data=retail_category")
    assert cfg.train == "lists/category_train.txt" and cfg.num_classes == 8


def test_style_data_configs_compose():
    assert data_cfg("data=style").num_classes == 7
    assert data_cfg("data=style_kfold")._target_ == "src.data.folds.KFoldImageClassificationDataModule"
    cfg = data_cfg("data=style_oof")
    assert cfg._target_.endswith("SoftLabelImageClassificationDataModule") and cfg.soft_weight == 0.2
    assert data_cfg("data=fashion_mnist").num_classes == 10
