"""Every command the README shows runs as written: `python -m src.train/src.eval` lines compose with Hydra,
`python -m src.recognize` and `src.service` lines parse, `make` lines name real targets, and the own-data commands
(those that set `data.source.root`) run one `fast_dev_run` step on tiny data this test writes in their formats."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parents[1]
HYDRA_ENTRY = {"src.train": "train", "src.eval": "eval"}


def readme_commands() -> list[list[str]]:
    """Shell lines of the README's ```bash blocks, continuations joined and comments dropped, as argv lists."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


COMMANDS = readme_commands()
HYDRA_COMMANDS = [c for c in COMMANDS if c[:2] == ["python", "-m"] and c[2] in HYDRA_ENTRY]
OWN_DATA = [c for c in HYDRA_COMMANDS if any(a.startswith("data.source.root=") for a in c)]


def _kind(argv: list[str]) -> str:
    """The task of an own-data command, from the keys it sets (retrieval needs query lists, detection COCO)."""
    keys = {a.split("=")[0] for a in argv}
    return ("retrieval" if "data.val_query" in keys else "detection" if "data.train_ann" in keys
            else "classification")


def _overrides(argv: list[str]) -> list[str]:
    """Hydra overrides of a command line: flags dropped, a sweep (`a=1,2`) composed at its first value."""
    out = []
    for a in argv[3:]:
        if a.startswith("-"):
            continue
        key, _, value = a.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


def test_readme_has_the_commands_this_test_checks():
    assert len(HYDRA_COMMANDS) >= 8 and len(OWN_DATA) == 4, COMMANDS
    assert {_kind(c) for c in OWN_DATA} == {"retrieval", "classification", "detection"}


@pytest.mark.parametrize("argv", HYDRA_COMMANDS, ids=lambda c: " ".join(c[2:6]))
def test_hydra_command_composes(argv, tmp_path):
    cfg = compose_cfg(HYDRA_ENTRY[argv[2]], _overrides(argv), tmp_path / "run", tmp_path / "data")
    assert cfg.get("data") is not None or argv[2] == "src.eval"


def test_recognize_commands_parse():
    from src.recognize import build_parser

    lines = [c for c in COMMANDS if c[:3] == ["python", "-m", "src.recognize"]]
    assert len(lines) >= 4
    for argv in lines:
        args = build_parser().parse_args(argv[3:])
        assert callable(args.func), argv


def test_service_commands_parse():
    from src.service.__main__ import build_parser

    lines = [c for c in COMMANDS if c[:3] == ["python", "-m", "src.service"]]
    assert len(lines) >= 2
    for argv in lines:
        build_parser().parse_args(argv[3:])


def test_make_commands_name_real_targets():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    used = {c[1] for c in COMMANDS if c[0] == "make" and len(c) > 1}
    assert used and used <= targets, used - targets


# ---- the own-data commands on written data ---------------------------------------------------------------------

def _image(path: Path, colour: tuple[int, int, int], seed: int, size=(40, 32)) -> None:
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(colour, np.float32) + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def write_own_data(root: Path) -> None:
    """Image lists for retrieval (ids 0-3 train, 4-5 val) and classification, and COCO JSON for detection."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    lines: dict[str, list[str]] = {k: [] for k in ("train", "val_query", "val_gallery", "train_cls", "val_cls")}
    for label, colour in enumerate(colours):
        for view in range(4):
            rel = f"images/{label}_{view}.jpg"
            _image(root / rel, colour, seed=10 * label + view)
            if label < 4:
                lines["train"].append(f"{rel} {label} p{label}_{view}")
                lines["train_cls" if view < 3 else "val_cls"].append(f"{rel} {label}")
            else:
                lines["val_gallery" if view == 0 else "val_query"].append(f"{rel} {label}")
    for name, rows in lines.items():
        (root / f"{name}.txt").write_text("\n".join(rows) + "\n")
    images, anns = [], []
    for i in range(4):
        img = np.full((96, 128, 3), 90, np.uint8)
        x, y = 20 + 10 * i, 16 + 5 * i
        img[y:y + 40, x:x + 30] = colours[i % 2]
        cv2.imwrite(str(root / f"images/scene_{i}.jpg"), img)
        images.append({"id": i + 1, "file_name": f"images/scene_{i}.jpg", "width": 128, "height": 96})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [x, y, 30, 40],
                     "area": 1200, "iscrowd": 0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}
    for name in ("train", "val"):
        (root / f"{name}.json").write_text(json.dumps(coco))


# One step, small images: the command's own experiment and data keys are kept.
FAST = ["++trainer.fast_dev_run=true", "validate_before_fit=false"]
FAST_BY_KIND = {
    "retrieval": ["data.image_size=32", "data.batch_sampler.pk=[2,2]", "data.eval_batch_size=8"],
    "classification": ["data.image_size=32", "data.batch_size=4"],
    "detection": ["++data.train_sizes=[96]", "++data.eval_size=96", "++data.batch_size=2"],
}


@pytest.mark.parametrize("argv", OWN_DATA, ids=_kind)
def test_own_data_command_trains_one_step(argv, tmp_path):
    from src.train import train

    root = tmp_path / "my_shop"
    write_own_data(root)
    kind = _kind(argv)
    overrides = [re.sub(r"^data\.source\.root=.*", f"data.source.root={root}", o) for o in _overrides(argv)]
    cfg = compose_cfg("train", ["trainer=cpu", "logger=csv", *overrides, *FAST, *FAST_BY_KIND[kind]],
                      tmp_path / "run", tmp_path / "data")
    agnostic = bool(cfg.data.get("class_agnostic"))  # detection_demo: one "product" class
    assert cfg.data.num_classes == (1 if agnostic else None)  # None: read from the written data
    metrics, objects = train(cfg)
    expected = {"retrieval": 4, "classification": 4, "detection": 1 if agnostic else 2}[kind]
    assert cfg.data.num_classes == expected
    assert any(k.startswith("test/") for k in metrics), metrics
