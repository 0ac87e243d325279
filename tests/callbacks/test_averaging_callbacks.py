"""Weight averaging: the callback's checkpoint holds the arithmetic mean of the saved epoch checkpoints, the
script computes the same mean, both keep the config; EMA with decay 0 equals the final weights."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from src.callbacks.averaging import EMAWeights, LastEpochsAverage
from src.utils.checkpoint import CONFIG_KEY, StoreConfigInCheckpoint


from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.data import keys
from src.models.classifier import ClassificationSystem
from tests.script_loader import load_script


def system():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    return ClassificationSystem(net, 3, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def loader(shuffle=True):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 6, 6, generator=g), torch.arange(16) % 3
    ds = TensorDataset(x, y)
    collate = lambda b: {keys.IMAGE: torch.stack([i[0] for i in b]), keys.LABEL: torch.stack([i[1] for i in b])}  # noqa
    return DataLoader(ds, batch_size=4, shuffle=shuffle, collate_fn=collate)


def fit(tmp_path, callback, epochs=3):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="epoch{epoch:03d}", save_top_k=-1,
                           every_n_epochs=1, auto_insert_metric_name=False)
    cfg = OmegaConf.create({"model": {"note": "stored config"}})
    trainer = L.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", max_epochs=epochs, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ckpt, callback, StoreConfigInCheckpoint(cfg)])
    model = system()
    trainer.fit(model, loader(shuffle=True))
    return model, sorted((tmp_path / "checkpoints").glob("epoch*.ckpt"))


def test_last_epochs_average_is_mean_of_saved_epochs(tmp_path):
    cb = LastEpochsAverage(num_epochs=2)
    model, epochs = fit(tmp_path, cb)
    assert len(epochs) == 3 and cb.path == tmp_path / "checkpoints" / "avg_last2.ckpt"
    avg = torch.load(cb.path, weights_only=True)
    saved = [torch.load(p, weights_only=True)["state_dict"] for p in epochs[-2:]]
    assert avg[CONFIG_KEY] == {"model": {"note": "stored config"}}
    for k, v in avg["state_dict"].items():
        if torch.is_floating_point(v):
            assert torch.allclose(v, (saved[0][k] + saved[1][k]) / 2, atol=1e-6), k
    assert not torch.equal(avg["state_dict"]["net.0.weight"], saved[-1]["net.0.weight"])
    # the model itself keeps its final weights
    assert torch.equal(model.state_dict()["net.0.weight"], saved[-1]["net.0.weight"])

    out = load_script("average_checkpoints").main([str(tmp_path / "checkpoints"), "--last", "2", "--out", str(tmp_path / "s.ckpt")])
    by_script = torch.load(out, weights_only=True)
    assert by_script[CONFIG_KEY] == avg[CONFIG_KEY]
    for k, v in avg["state_dict"].items():
        assert torch.allclose(by_script["state_dict"][k].float(), v.float(), atol=1e-6), k


def test_ema_with_zero_decay_equals_final_weights(tmp_path):
    cb = EMAWeights(decay=0.0, warmup=False)
    model, _ = fit(tmp_path, cb, epochs=1)
    ema = torch.load(cb.path, weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.allclose(ema[k].float(), v.float(), atol=1e-6), k


def test_bad_window():
    with pytest.raises(ValueError):
        LastEpochsAverage(num_epochs=0)


class _Trajectory(L.Callback):
    """The net's weights at the start and after every optimizer step."""

    def __init__(self):
        self.states = []

    def on_train_start(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.on_train_start(trainer, pl_module)


def _fit_plain(tmp_path, callback):
    trajectory = _Trajectory()
    trainer = L.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", max_epochs=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        enable_checkpointing=False, callbacks=[trajectory, callback])
    model = system()
    trainer.fit(model, loader(shuffle=False))
    return model, trajectory.states


def test_ema_weights_after_n_steps_equal_hand_computed_and_lightnings_ema(tmp_path):
    """EMA without decay warmup: the first update copies the weights after step 1, every later one is
    ema = d * ema + (1 - d) * w (float tensors; integer buffers are copied). Lightning's EMAWeightAveraging gives
    the same float weights; it is not used because it puts the average into validation, into every checkpoint
    and into the model at the end of fit, where this callback leaves training, model selection and the saved
    checkpoints on the trained weights and writes the average to its own ema.ckpt (and it has no decay warmup)."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    decay = 0.5
    cb = EMAWeights(decay=decay, warmup=False, dirpath=str(tmp_path / "ours"))
    model, states = _fit_plain(tmp_path / "ours", cb)
    assert len(states) == 1 + 8  # 16 samples / batch 4, 2 epochs
    by_hand = {k: v.double() for k, v in states[1].items()}
    for s in states[2:]:
        by_hand = {k: decay * v + (1 - decay) * s[k].double() if torch.is_floating_point(s[k]) else s[k]
                   for k, v in by_hand.items()}
    ema = torch.load(cb.path, weights_only=True)["state_dict"]
    for k, v in by_hand.items():
        assert torch.allclose(ema[f"net.{k}"].double(), v.double(), rtol=0, atol=1e-6), k
    assert torch.equal(model.net[0].weight, states[-1]["0.weight"])  # the model keeps its trained weights

    lightning_model, lightning_states = _fit_plain(tmp_path / "lightning", EMAWeightAveraging(decay=decay))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(states, lightning_states) for k in a)  # same training
    for k, v in lightning_model.net.state_dict().items():
        if torch.is_floating_point(v):
            assert torch.allclose(ema[f"net.{k}"], v, rtol=0, atol=1e-6), k
    assert not torch.equal(lightning_model.net[0].weight, states[-1]["0.weight"])  # Lightning's: the average
