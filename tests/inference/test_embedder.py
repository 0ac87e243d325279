"""Embedder: checkpoint -> preprocessing + net, batched embeddings, fingerprint semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.inference.embedder import compute_fingerprint, load_embedder
from src.recognition.gallery import Gallery
from src.recognition.pipeline import RecognitionPipeline
from src.retrieval.index_base import IncompatibleIndexError
from tests.recognition.helpers import CATALOGUE, studio_shot, write_tiny_checkpoint


def _crops(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(int(rng.integers(20, 70)), int(rng.integers(20, 70)), 3), dtype=np.uint8)
            for _ in range(n)]


def test_from_checkpoint_embeds_normalised_and_batch_invariant(tiny_ckpt):
    emb = load_embedder(tiny_ckpt, batch_size=2)
    crops = _crops(5)
    out = emb.embed(crops)
    assert out.shape == (5, 32) and out.dtype == np.float32 and emb.dim == 32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    alone = np.concatenate([emb.embed([c]) for c in crops])  # batch of 1 vs batches of 2: eval-mode BN
    np.testing.assert_allclose(out, alone, atol=1e-5)
    assert emb.embed([]).shape == (0, 32)


def test_preprocessing_is_the_checkpoint_eval_transform(tiny_ckpt):
    """Letterbox to data.image_size (32) and ImageNet normalisation, as conf/transforms/eval_letterbox.yaml."""
    emb = load_embedder(tiny_ckpt)
    img = np.full((10, 40, 3), 255, np.uint8)  # wide: 32x8 after LongestMaxSize, padded to 32x32
    t = emb.preprocess(img)
    assert tuple(t.shape) == (3, 32, 32)
    white = (1.0 - 0.485) / 0.229
    assert torch.isclose(t[0, 16, 16], torch.tensor(white), atol=1e-3)
    assert torch.isclose(t[0, 0, 16], torch.tensor(-0.485 / 0.229), atol=1e-3)  # black padding


def test_fingerprint_depends_on_weights_and_preprocessing(tiny_ckpt, tmp_path):
    a, b = load_embedder(tiny_ckpt), load_embedder(tiny_ckpt)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    other = write_tiny_checkpoint(tmp_path / "other_size.ckpt", tmp_path, image_size=40)  # same seed, same weights
    c = load_embedder(other)
    assert c.fingerprint != a.fingerprint
    assert compute_fingerprint(a.net, {"x": 1}) != compute_fingerprint(a.net, {"x": 2})
    with torch.no_grad():
        next(b.net.parameters()).add_(1e-6)
    assert compute_fingerprint(b.net, {"x": 1}) != compute_fingerprint(a.net, {"x": 1})


def test_gallery_refuses_another_models_queries(tiny_ckpt, tmp_path):
    emb = load_embedder(tiny_ckpt)
    gallery = Gallery.create(emb, tmp_path / "g")
    from tests.recognition.helpers import studio_entry

    gallery.add([studio_entry(CATALOGUE[0])])
    other = load_embedder(write_tiny_checkpoint(tmp_path / "o.ckpt", tmp_path, image_size=40))
    with pytest.raises(IncompatibleIndexError, match="fingerprint"):
        RecognitionPipeline(other, gallery.index)
    with pytest.raises(IncompatibleIndexError, match="fingerprint"):
        Gallery.open(tmp_path / "g", other)
    with pytest.raises(IncompatibleIndexError, match="fingerprint"):
        gallery.index.search(other.embed([studio_shot(CATALOGUE[0])]), 1, fingerprint=other.fingerprint)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((4, 4), np.uint8), "crop 1"),
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    ("x.jpg", "str"),
])
def test_bad_crop_is_one_clear_error(tiny_ckpt, bad, msg):
    emb = load_embedder(tiny_ckpt)
    with pytest.raises(ValueError, match=msg):
        emb.embed([np.zeros((4, 4, 3), np.uint8), bad])


def test_missing_eval_transform_is_named(tmp_path, tiny_ckpt):
    """A checkpoint from before the `inference:` node whose config lacks the transform: the key is named."""
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    del ckpt["inference"], ckpt["hydra_config"]["data"]["eval_transform"]
    torch.save(ckpt, tmp_path / "no_tf.ckpt")
    with pytest.raises(KeyError, match="eval_transform"):
        load_embedder(tmp_path / "no_tf.ckpt")


def test_checkpoint_from_a_real_training_run(make_cfg):
    """One optimisation step through src.train (~8 s): the checkpoint it writes loads as an Embedder."""
    from src.train import train

    cfg = make_cfg(["experiment=demo_retrieval", "model.net.backbone.model_name=test_efficientnet",
                    "model.net.embedding_dim=32", "data.image_size=32", "trainer.max_epochs=1",
                    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "validate_before_fit=false",
                    "test=false", "callbacks.early_stopping=null", "callbacks.retrieval.num_grid_queries=0"])
    train(cfg)
    ckpt = f"{cfg.paths.output_dir}/checkpoints/last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["inference"]  # the declared `inference:` node, as training wrote it
    assert stored["kind"] == "embedder" and stored["eval_transform"]["transform"]["__class_fullname__"] == "Compose"
    emb = load_embedder(ckpt)
    out = emb.embed(_crops(3))
    assert out.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
