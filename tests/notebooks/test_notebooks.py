"""notebooks/: each notebook runs headless (nbclient, the env's own `python3` ipykernel) on a checkpoint trained
for one batch on the tiny retail world, with its parameters injected after its `parameters` cell (papermill's
convention), and prints numbers checked here against independent truth; every committed notebook is stripped of
outputs so none can rot in git."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from src.train import train
from tests.conftest import TINY_WORLD, TINY_WORLD_OVERRIDES, compose_cfg
from tests.script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
# One optimizer step (max_epochs=1, one batch): a real src.train run directory with train_summary.json and a best
# checkpoint, in seconds. Validation runs once, so the summary's val metrics belong to that checkpoint.
TINY_RUN = ["experiment=demo_retrieval", "trainer=cpu", "logger=csv", "model.net.backbone.model_name=test_efficientnet",
            "model.net.embedding_dim=16", "data.image_size=32", "data.batch_sampler.pk=[4,2]",
            "validate_before_fit=false", "test=false", "callbacks.progress_bar=null",
            "callbacks.retrieval.num_grid_queries=0", "callbacks.early_stopping=null", "trainer.max_epochs=1",
            "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            *TINY_WORLD_OVERRIDES]
PROBE = 'print("KERNEL_PREFIX", sys.prefix)'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> Path:
    run = tmp_path_factory.mktemp("notebook_run")
    train(compose_cfg("train", TINY_RUN, run, data_dir))
    assert (run / "train_summary.json").is_file()
    return run


@pytest.fixture(autouse=True)
def quiet_jupyter_dirs(tmp_path, monkeypatch):
    """The kernel's profile and connection files go to the test's tmp dir, not the home directory."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))


def parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nb.cells[tagged[0]].cell_type == "code", "one code cell tagged `parameters`"
    return tagged[0]


def execute(name: str, **params) -> nbformat.NotebookNode:
    """Run notebooks/<name> from notebooks/ (as Jupyter would) with `params` overriding its parameters cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    i = parameters_index(nb)
    defined = set(re.findall(r"^(\w+) =", nb.cells[i].source, flags=re.M))
    assert set(params) <= defined, f"not parameters of {name}: {set(params) - defined}"
    injected = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def stdout(nb) -> str:
    return "".join(o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def png_count(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def assert_ran_in_this_env(out: str) -> None:
    prefix = re.search(r"^KERNEL_PREFIX (.+)$", out, re.M).group(1)
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), "the kernel is not this environment's python"


def test_committed_notebooks_are_stripped():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["inspect_retrieval_run.ipynb", "price_counter_photo.ipynb"], "a new notebook needs a test here"
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        parameters_index(nb)
        assert nb.metadata.kernelspec.name == "python3", name
        for k, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{name} cell {k} has outputs: run `python scripts/strip_notebooks.py`")


def test_inspect_retrieval_run(run_dir):
    """A run directory stands for its best checkpoint; the notebook's val metrics are the ones the training
    callback logged for that checkpoint (same weights, same eval transform, same lists: rank metrics agree up to
    float32 ties); the thresholds keep their false-accept targets."""
    nb = execute("inspect_retrieval_run.ipynb", CKPT=str(run_dir), SPLIT="val", TARGET_FARS=(0.2, 0.5))
    out = stdout(nb)
    assert_ran_in_this_env(out)
    assert png_count(nb) >= 3  # grid, histograms, FAR curves
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert f"checkpoint: {summary['best_ckpt_path']}" in out
    metrics = {k: float(v) for k, v in re.findall(r"^(val/[\w@]+): ([-\d.]+)$", out, re.M)}
    assert {"val/recall@1", "val/recall@5", "val/map@r"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    for key in ("val/recall@1", "val/recall@5", "val/map@r"):
        assert metrics[key] == pytest.approx(summary["metrics"][key], abs=1e-4), key  # printed with 4 decimals
    rows = re.findall(r"^([\d.]+)\s+([-\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [float(r[0]) for r in rows] == [0.2, 0.5]
    assert all(float(far) <= float(target) for target, _, far, _ in rows), rows


def test_inspect_retrieval_run_on_the_train_list_searched_against_itself(run_dir):
    """No gallery list: every image is a query against all the others (its own row left out). The tiny world's
    training SKUs have 4 views each, so every query has a genuine and an impostor score."""
    nb = execute("inspect_retrieval_run.ipynb", CKPT=str(run_dir), SPLIT="train", TARGET_FARS=(0.1,))
    out = stdout(nb)
    assert png_count(nb) >= 3
    n = int(re.search(r"^train: (\d+) queries", out, re.M).group(1))
    assert n == TINY_WORLD["num_train_skus"] * TINY_WORLD["train_views"]
    assert f"{n} gallery images" in out and f"{n} genuine scores" in out and f"{n} impostor scores" in out
    metrics = {k: float(v) for k, v in re.findall(r"^(train/[\w@]+): ([-\d.]+)$", out, re.M)}
    assert metrics and all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    (target, _, far, _), = re.findall(r"^([\d.]+)\s+([-\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert float(target) == 0.1 and float(far) <= 0.1


def test_price_counter_photo_with_ground_truth_boxes(run_dir):
    """TARGET_FAR=1 accepts every box, so the receipt prices all of them: its total is checked against
    catalogue.json and the printed true total against scenes_val.json, both read here."""
    ckpt = json.loads((run_dir / "train_summary.json").read_text())["best_ckpt_path"]
    nb = execute("price_counter_photo.ipynb", EMBEDDER=ckpt, DETECTOR=None, SCENE=1, TARGET_FAR=1.0)
    out = stdout(nb)
    assert_ran_in_this_env(out)
    assert png_count(nb) == 1
    assert "detector: none (ground-truth boxes)" in out
    world = Path(re.search(r"^world: (.+)$", out, re.M).group(1))
    prices = {str(s["sku_id"]): s["price"] for s in json.loads((world / "catalogue.json").read_text())["skus"]}
    coco = json.loads((world / "annotations" / "scenes_val.json").read_text())
    image_id = coco["images"][1]["id"]
    truth = Counter(str(a["sku_id"]) for a in coco["annotations"] if a["image_id"] == image_id)

    total = float(re.search(r"^  total ([\d.]+)   complete=", out, re.M).group(1))
    priced = re.findall(r"^  (?:ok |XX )(\d+) x .+ sku\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert priced and 0 < sum(int(n) for n, *_ in priced) <= sum(truth.values())
    for count, sku, unit, line_total in priced:
        assert float(unit) == pytest.approx(prices[sku], abs=0.005)  # printed with 2 decimals
        assert float(line_total) == pytest.approx(int(count) * prices[sku], abs=0.005)
    assert total == pytest.approx(sum(int(n) * prices[sku] for n, sku, *_ in priced), abs=0.005)
    true_total = float(re.search(r"true total ([\d.]+)", out).group(1))
    assert true_total == pytest.approx(sum(prices[s] * c for s, c in truth.items()), abs=0.005)


def strip_script():
    return load_script("strip_notebooks")


def test_strip_script_clears_an_executed_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1 + 1")])
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert nb.cells[1].outputs and nb.cells[1].execution_count == 1
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    assert strip_script().strip(path) is True and strip_script().strip(path) is False
    cell = nbformat.read(path, as_version=4).cells[1]
    assert cell.outputs == [] and cell.execution_count is None and cell.source == "1 + 1"


def test_price_counter_photo_with_a_detector_checkpoint(run_dir, tmp_path):
    """The detector path: an untrained DetectionSystem checkpoint (score threshold 0: whatever it proposes)."""
    from hydra.utils import instantiate

    from src.utils.checkpoint import CONFIG_KEY

    config = {"model": {"_target_": "src.models.detection.DetectionSystem", "class_agnostic": True,
                        "net": {"_target_": "src.models.detectors.torchvision_models.fasterrcnn_timm",
                                  "backbone_name": "resnet18", "num_classes": 2, "out_indices": [2, 3, 4],
                                  "fpn_channels": 32, "pretrained": False},
                        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}},
              "data": {"eval_size": 96, "max_size": 128}}
    torch.manual_seed(0)
    det = tmp_path / "det.ckpt"
    torch.save({"state_dict": instantiate(config["model"]).state_dict(), CONFIG_KEY: config}, det)
    nb = execute("price_counter_photo.ipynb", EMBEDDER=str(run_dir), DETECTOR=str(det), DET_THRESHOLD=0.0)
    out = stdout(nb)
    assert_ran_in_this_env(out)
    assert f"detector: {det}" in out and png_count(nb) == 1
    assert re.search(r"^  total [\d.]+   complete=(True|False)$", out, re.M)
