"""2-process CPU DDP (gloo): the same retrieval metrics as 1 process on the same checkpoint, and a memory bank
holding both ranks' embeddings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.eval import evaluate
from src.train import train
from tests.conftest import TINY_WORLD_OVERRIDES, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
TINY = ["experiment=demo_retrieval", "data.image_size=32", "data.batch_sampler.pk=[4,2]", "data.eval_batch_size=7",
        "model.net.embedding_dim=16", "validate_before_fit=false", "callbacks.progress_bar=null",
        "callbacks.retrieval.num_grid_queries=0"]


def _subprocess(module, args, cwd=ROOT):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_ddp_eval_matches_single_process(make_cfg, tmp_path, data_dir):
    cfg = make_cfg([*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false"])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints/last.ckpt"
    single, _ = evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}"], tmp_path / "single", data_dir))
    _subprocess("src.eval", [f"ckpt_path={ckpt}", "trainer=ddp_cpu", f"report_dir={tmp_path / 'ddp'}",
                             f"paths.outputs_dir={tmp_path}", f"paths.data_dir={data_dir}"])
    ddp = json.loads((tmp_path / "ddp/metrics.json").read_text())["metrics"]
    for key in ("test/recall@1", "test/recall@5", "test/map@r", "test/precision@5"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


@pytest.mark.slow
def test_ddp_memory_bank_holds_both_ranks(tmp_path, data_dir):
    xbm = ("+model.losses.xbm={_target_:src.losses.xbm.CrossBatchMemoryLoss,embedding_size:16,memory_size:64,"
           "loss:{_target_:pytorch_metric_learning.losses.MultiSimilarityLoss}}")
    _subprocess("src.train", [*TINY, *TINY_WORLD_OVERRIDES, xbm, "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                              "trainer.limit_val_batches=1", "test=false", f"paths.outputs_dir={tmp_path}",
                              f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"])
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    # One step of P x K = 4 x 2 per rank: the memory holds 2 ranks x 8 embeddings, gathered before enqueue.
    assert int(state["losses.xbm.filled"]) == 16
    labels = state["losses.xbm.labels"][:16]
    assert len(set(labels.tolist())) >= 5  # identities from both ranks' batches (4 per rank, drawn independently)
    emb = state["losses.xbm.embeddings"][:16]
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(16), atol=1e-4, rtol=0)
