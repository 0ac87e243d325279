"""RetrievalEvaluation inside a real Trainer: the hooks fire, the logged metrics equal an independent
computation (pytorch-metric-learning) on the same embeddings, and the top-k picture is written."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from src.callbacks.retrieval import RetrievalEvaluation
from src.data import keys
from src.retrieval.metrics import evaluate_retrieval
from src.train import train

TINY = ["experiment=demo_retrieval", "data.image_size=32", "data.batch_sampler.pk=[4,2]", "data.eval_batch_size=16",
        "model.net.embedding_dim=16", "validate_before_fit=false", "callbacks.progress_bar=null",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2"]


def _unambiguous_queries(qe, ql, ge, gl, eps=1e-5):
    """Queries whose top R+1 similarities (R = same-label gallery items) are all more than eps apart."""
    sims = -np.sort(-(qe @ ge.T), axis=1)
    r = np.array([(gl == label).sum() for label in ql])
    return np.array([np.all(-np.diff(s[: n + 1]) > eps) for s, n in zip(sims, r)])


def _embed(model, loader):
    out = {"e": [], "l": []}
    with torch.inference_mode():
        for batch in loader:
            out["e"].append(model(batch[keys.IMAGE]))
            out["l"].append(batch[keys.LABEL])
    return torch.cat(out["e"]).numpy(), torch.cat(out["l"]).numpy()


def test_logged_metrics_match_pml_and_grid_written(make_cfg):
    cfg = make_cfg(TINY)
    metrics, objects = train(cfg)
    cb = next(c for c in objects["callbacks"] if isinstance(c, RetrievalEvaluation))
    assert {"val/recall@1", "val/map@r", "test/recall@1", "test/precision@5", "test/map@10"} <= set(metrics)
    assert cb.last_metrics["test/recall@1"] == pytest.approx(metrics["test/recall@1"])
    # Wiring: the logged numbers are the metrics of exactly the vectors the callback gathered ...
    model, dm = objects["model"].eval(), objects["datamodule"]
    qe, ql, qi = cb._gathered(model, 0)
    ge, gl, gi = cb._gathered(model, 1)
    ours = evaluate_retrieval(qe, ql, ge, gl, ks=cb.ks, max_r=cb.max_r)
    for name in ("recall@1", "map@r", "precision@5", "map@10"):
        assert metrics[f"test/{name}"] == pytest.approx(ours[name], abs=1e-6), name  # logged as float32
    # ... and an independent implementation (PML) agrees on every query whose ranking is unambiguous. A 1-epoch
    # model on 32 px images gives exactly tied similarities (near-identical sibling studio shots): their order
    # is a tie-break convention (PML searches by L2, we by inner product), not a metric property.
    keep = _unambiguous_queries(qe, ql, ge, gl)
    assert keep.sum() >= 4, keep  # enough queries for the comparison to mean something
    pml = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    ref = pml.get_accuracy(qe[keep], ql[keep], ge, gl, ref_includes_query=False)
    sub = evaluate_retrieval(qe[keep], ql[keep], ge, gl, ks=(1,), max_r=cb.max_r)
    assert sub["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert sub["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    # Those vectors are the model's own embeddings of the test split (up to float noise).
    q, g = dm.test_dataloader()
    for (emb, lab, idx), loader in (((qe, ql, qi), q), ((ge, gl, gi), g)):
        fresh_emb, fresh_lab = _embed(model, loader)
        assert len(idx) == len(fresh_emb) == len(loader.dataset)
        np.testing.assert_array_equal(lab, fresh_lab[idx])
        np.testing.assert_allclose(emb, fresh_emb[idx], atol=1e-4)
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
