"""ClassificationSystem: batch mixing only in training, distillation with a frozen teacher, TTA, reports and
out-of-fold prediction files. A tiny CNN and in-memory data keep each Trainer run to about a second."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from src.data import keys
from src.losses.distillation import kd_kl_div
from src.models.classifier import ClassificationSystem
from src.models.teacher import FrozenTeacher
from src.nn.mix import BatchMix

C = 3


def tiny_net(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(dropout), nn.Linear(8, C))


class Toy(Dataset):
    """Class c images have channel c bright: learnable in a few steps."""

    def __init__(self, n=24, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % C
        self.x = torch.rand(n, 3, 8, 8, generator=g) * 0.5
        self.x[torch.arange(n), self.y] += 1.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {keys.IMAGE: self.x[i], keys.LABEL: self.y[i], keys.INDEX: torch.tensor(i)}


def loader(n=24, shuffle=False):
    return DataLoader(Toy(n), batch_size=8, shuffle=shuffle)


def system(**kw):
    kw.setdefault("net", tiny_net())
    return ClassificationSystem(num_classes=C, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kw)


def trainer(tmp_path, **kw):
    kw.setdefault("max_epochs", 1)
    return L.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)


def test_batch_mix_runs_in_training_only(tmp_path):
    mix = BatchMix(C, cutmix_prob=1.0)
    model = system(batch_mix=mix)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=2)
    t.fit(model, loader(), loader())
    assert mix.calls == 2  # one per training step, none in the sanity check or validation
    t.validate(model, loader())
    t.test(model, loader())
    assert mix.calls == 2


@pytest.mark.numeric
def test_loss_falls_on_a_learnable_problem(tmp_path):
    model = system()
    batch = next(iter(loader()))
    before = model.compute_losses(batch)["loss"].item()
    trainer(tmp_path, max_epochs=15).fit(model, loader(shuffle=True))
    model.eval()
    assert model.compute_losses(batch)["loss"].item() < 0.5 * before


def test_distillation_teacher_frozen_and_loss_dict(tmp_path):
    teacher = FrozenTeacher(tiny_net(seed=1, dropout=0.5))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    teacher.net.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    model = system(teacher=teacher, kd_alpha=0.3, kd_temperature=2.0)
    assert not any(k.startswith("teacher") for k in model.state_dict())  # not part of the student's weights
    t = trainer(tmp_path, max_steps=3, limit_val_batches=0)
    t.fit(model, loader())
    assert modes and not any(modes)  # eval mode in every training step, although the student was in train mode
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN stats untouched too
    assert {"train/loss", "train/loss_ce", "train/loss_kd"} <= set(t.callback_metrics)
    model.eval()
    batch = next(iter(loader()))
    losses = model.compute_losses(batch)
    with torch.no_grad():
        s, te = model(batch[keys.IMAGE]), teacher(batch[keys.IMAGE])
    kd = kd_kl_div(s, te, 2.0)
    assert losses["loss_kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(0.3 * kd.item() + 0.7 * losses["loss_ce"].item(), rel=1e-5)


def test_teacher_factory_built_at_fit_only(tmp_path):
    built = []

    def factory():
        built.append(1)
        return FrozenTeacher(tiny_net(seed=2))

    model = system(teacher=factory)
    assert model.teacher is None and not built  # evaluating a student never touches the teacher's file
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, loader())
    assert built == [1] and model.teacher is not None


def test_tta_option_averages_flipped_probabilities():
    net = tiny_net()
    model = system(net=net, tta_hflip=True).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = torch.log((net(x).softmax(-1) + net(x.flip(-1)).softmax(-1)) / 2)
        assert torch.allclose(model.predict_logits(x), expected, atol=1e-6)
    assert set(model.state_dict()) == {f"net.{k}" for k in net.state_dict()} | {
        k for k in model.state_dict() if not k.startswith("net.")}


def test_report_artifacts_and_prediction_files(tmp_path):
    model = system(class_names=["a", "b", "c"], save_test_predictions=True)
    t = trainer(tmp_path, max_epochs=3)
    t.fit(model, loader(shuffle=True))
    metrics = t.test(model, loader(n=30))[0]
    pictures = model.report_artifacts(tmp_path / "report")
    assert sorted(p.name for p in pictures) == ["confusion_matrix.png", "per_class_recall.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)
    report = json.loads((tmp_path / "report" / "classification_report.json").read_text())
    assert np.asarray(report["confusion"]).sum() == 30
    assert report["accuracy"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert report["macro_f1"] == pytest.approx(metrics["test/f1"], abs=1e-5)
    assert [p["support"] for p in report["per_class"]] == [10, 10, 10]
    z = np.load(tmp_path / "predictions" / "test_probs.npz")
    assert z["probs"].shape == (30, C) and np.allclose(z["probs"].sum(1), 1, atol=1e-5)
    assert sorted(z["uids"].tolist(), key=int) == [str(i) for i in range(30)]  # no datamodule: uid = index
    acc = (z["probs"].argmax(1) == z["labels"]).mean()
    assert acc == pytest.approx(metrics["test/acc"], abs=1e-6)
