"""RetrievalEvaluation inside a real Trainer: the hooks fire, the logged metrics equal an independent
computation (pytorch-metric-learning) on the same embeddings, and the top-k picture is written."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from src.callbacks.retrieval import RetrievalEvaluation
from src.data import keys
from src.train import train

TINY = ["experiment=demo_retrieval", "data.image_size=32", "data.batch_sampler.pk=[4,2]", "data.eval_batch_size=16",
        "model.net.embedding_dim=16", "validate_before_fit=false", "callbacks.progress_bar=null",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2"]


def _embed(model, loader):
    out = {"e": [], "l": []}
    with torch.inference_mode():
        for batch in loader:
            out["e"].append(model(batch[keys.IMAGE]))
            out["l"].append(batch[keys.LABEL])
    return torch.cat(out["e"]).numpy(), torch.cat(out["l"]).numpy()


@pytest.mark.slow  # flaky under thread-count changes: near-tied similarities of a 1-epoch model (see closing note)
def test_logged_metrics_match_pml_and_grid_written(make_cfg):
    cfg = make_cfg(TINY)
    metrics, objects = train(cfg)
    cb = next(c for c in objects["callbacks"] if isinstance(c, RetrievalEvaluation))
    assert {"val/recall@1", "val/map@r", "test/recall@1", "test/precision@5", "test/map@10"} <= set(metrics)
    assert cb.last_metrics["test/recall@1"] == pytest.approx(metrics["test/recall@1"])
    # Independent oracle on the embeddings of the same model and test split.
    model, dm = objects["model"].eval(), objects["datamodule"]
    q, g = dm.test_dataloader()
    qe, ql = _embed(model, q)
    ge, gl = _embed(model, g)
    pml = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    ref = pml.get_accuracy(qe, ql, ge, gl, ref_includes_query=False)
    assert metrics["test/recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert metrics["test/map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    grids = list(Path(objects["trainer"].log_dir).glob("media/*top5*.png"))
    assert grids, "top-5 retrieval picture not written"


def test_query_set_as_its_own_gallery_drops_self_matches():
    cb = RetrievalEvaluation(ks=(1,), log_grid=False)
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    cb._buffers = {0: {"embeddings": [emb], keys.LABEL: [torch.tensor([0, 0, 1, 1])], keys.INDEX: [torch.arange(4)]}}

    class Stub:
        logged = {}
        trainer = type("T", (), {"world_size": 1, "sanity_checking": False, "is_global_zero": True})()

        def log_dict(self, d, **kw):
            self.logged.update(d)

    stub = Stub()
    cb._evaluate(stub.trainer, stub, "val")
    # With self-matches kept recall@1 would trivially be 1 for any embedding; here each item's nearest other
    # item is its same-label neighbour, so 1.0 comes from the neighbour, and swapping labels breaks it.
    assert stub.logged["val/recall@1"] == 1.0
    cb._buffers[0][keys.LABEL] = [torch.tensor([0, 1, 0, 1])]
    cb._evaluate(stub.trainer, stub, "val")
    assert stub.logged["val/recall@1"] == 0.0
    assert np.isfinite(stub.logged["val/map@r"])
