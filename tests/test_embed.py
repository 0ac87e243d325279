"""src.embed on real (tiny) checkpoints trained by src.train: npz contents in list order, an independent
per-image oracle, the ensemble formula, data overrides and the Hydra entry point."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from src.data.images import read_rgb
from src.data.readers import read_image_list
from src.embed import embed
from src.retrieval.search import l2_normalize
from src.train import train
from src.utils.checkpoint import config_from_checkpoint, load_system
from tests.conftest import TINY_WORLD_OVERRIDES, compose_cfg

ROOT = Path(__file__).resolve().parents[1]
# max_epochs=1 with one batch (fast_dev_run would write no checkpoint).
TINY = ["experiment=demo_retrieval", "trainer=cpu", "logger=csv", "model.net.backbone.model_name=test_efficientnet",
        "data.batch_sampler.pk=[4,2]", "validate_before_fit=false", "test=false", "callbacks.progress_bar=null",
        "callbacks.retrieval.num_grid_queries=0", "callbacks.early_stopping=null", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
        *TINY_WORLD_OVERRIDES]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, data_dir):
    """Two checkpoints with different preprocessing: A letterbox 32 px, dim 16; B squashed 48 px, dim 8."""
    out = []
    for name, extra in [("a", ["data.image_size=32", "model.net.embedding_dim=16", "seed=1"]),
                        ("b", ["data.image_size=48", "model.net.embedding_dim=8", "seed=2",
                               "transforms@data.eval_transform=eval_resize"])]:
        run = tmp_path_factory.mktemp(f"run_{name}")
        _, objects = train(compose_cfg("train", [*TINY, *extra], run, data_dir))
        cb = objects["trainer"].checkpoint_callback
        out.append(Path(cb.best_model_path or cb.last_model_path))
        assert out[-1].is_file()
    return out


def _embed(tmp_path, data_dir, overrides):
    cfg = compose_cfg("embed", overrides, tmp_path / "embed_run", data_dir)
    result, path = embed(cfg)
    with np.load(path) as z:  # no allow_pickle: every array is numeric or fixed-width unicode
        stored = {k: z[k] for k in z.files}
    for k in result:
        assert np.array_equal(stored[k], result[k]), k
    return stored, path


def _list(ckpt, split):
    dm = instantiate(config_from_checkpoint(ckpt).data)
    return read_image_list(dm.source.root / dm.paths[split], dm.source.root)


def test_npz_contents_follow_the_list_and_match_a_per_image_oracle(ckpts, tmp_path, data_dir):
    z, path = _embed(tmp_path, data_dir, [f"ckpt_path={ckpts[0]}", "split=query", f"output={tmp_path}/q.npz"])
    assert path == tmp_path / "q.npz" and [p.name for p in tmp_path.iterdir() if p.is_file()] == ["q.npz"]
    samples = _list(ckpts[0], "test_query")
    assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (len(samples), 16)
    np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, atol=1e-5)
    assert z["labels"].tolist() == [s.label for s in samples]
    assert z["ids"].tolist() == [s.uid for s in samples]
    assert z["paths"].tolist() == [s.path for s in samples]
    assert z["index"].tolist() == list(range(len(samples)))
    assert str(z["split"]) == "test_query" and z["checkpoints"].tolist() == [str(ckpts[0])]
    # Oracle: the checkpoint's model on each image through its stored eval transform, one at a time.
    system, train_cfg = load_system(ckpts[0])
    tf = instantiate(train_cfg.data.eval_transform)
    rows = [0, len(samples) // 2, len(samples) - 1]
    with torch.no_grad():
        ref = torch.cat([system(tf(image=read_rgb(samples[i].path))["image"][None]) for i in rows]).numpy()
    np.testing.assert_allclose(z["embeddings"][rows], ref, atol=1e-5)


def test_ensemble_is_normalised_concat_of_normalised_members(ckpts, tmp_path, data_dir):
    a, _ = _embed(tmp_path, data_dir, [f"ckpt_path={ckpts[0]}", "split=gallery", f"output={tmp_path}/a.npz"])
    b, _ = _embed(tmp_path, data_dir, [f"ckpt_path={ckpts[1]}", "split=gallery", f"output={tmp_path}/b.npz"])
    ens, _ = _embed(tmp_path, data_dir, [f"ckpt_paths=[{ckpts[0]},{ckpts[1]}]", "split=gallery",
                                         f"output={tmp_path}/ab.npz"])
    expected = l2_normalize(np.concatenate([l2_normalize(a["embeddings"]), l2_normalize(b["embeddings"])], axis=1))
    assert ens["embeddings"].shape[1] == 16 + 8
    # float32 concat + normalise done in another order than numpy's: a few ulps (1e-7) apart at most.
    np.testing.assert_allclose(ens["embeddings"], expected, rtol=0, atol=1e-6)
    assert np.array_equal(ens["ids"], a["ids"]) and np.array_equal(ens["labels"], a["labels"])
    assert ens["checkpoints"].tolist() == [str(c) for c in ckpts]


def test_train_split_is_embedded_without_augmentation(ckpts, tmp_path, data_dir):
    ov = [f"ckpt_path={ckpts[0]}", "split=train", "batch_size=5"]
    z1, _ = _embed(tmp_path, data_dir, [*ov, f"output={tmp_path}/t1.npz"])
    z2, _ = _embed(tmp_path, data_dir, [*ov, f"output={tmp_path}/t2.npz"])
    assert len(z1["ids"]) == len(_list(ckpts[0], "train"))
    # The train transform would move these by O(0.1); the tolerance only absorbs float32 rounding.
    np.testing.assert_allclose(z1["embeddings"], z2["embeddings"], rtol=0, atol=1e-6)


def test_data_overrides_merge_or_replace_and_bad_split_is_named(ckpts, tmp_path, data_dir):
    merged, _ = _embed(tmp_path, data_dir, [f"ckpt_path={ckpts[0]}", "split=query",
                                            "+data.test_query=lists/query_val.txt", f"output={tmp_path}/m.npz"])
    assert merged["ids"].tolist() == [s.uid for s in _list(ckpts[0], "val_query")]
    replaced, _ = _embed(tmp_path, data_dir, [f"ckpt_path={ckpts[0]}", "split=val_gallery", "data=retail_retrieval",
                                              "data.image_size=32", *TINY_WORLD_OVERRIDES, f"output={tmp_path}/r.npz"])
    assert replaced["ids"].tolist() == [s.uid for s in _list(ckpts[0], "val_gallery")]
    with pytest.raises(KeyError, match="val_query"):
        _embed(tmp_path, data_dir, [f"ckpt_path={ckpts[0]}", "split=nope", f"output={tmp_path}/x.npz"])


def test_command_line(ckpts, tmp_path):
    out = tmp_path / "cli.npz"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "src.embed", f"ckpt_path={ckpts[1]}", "split=gallery",
                           f"output={out}", f"hydra.run.dir={tmp_path}/hydra"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as z:
        assert z["embeddings"].shape[1] == 8 and len(z["ids"]) == len(_list(ckpts[1], "test_gallery"))
