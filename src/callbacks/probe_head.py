"""Step 0 of classification fine-tuning is a linear probe: before the first validation (`validate_before_fit`)
or the first training step, the classifier head is replaced by a logistic regression fitted on the frozen
pretrained features of the training images (src/models/logistic_probe.py), its regularisation chosen on the
validation split as linear-probe protocols do (CLIP's sweeps C). The starting model is then the probe the field
reports for a pretrained backbone, it competes in model selection (src/utils/model_selection.py), and
fine-tuning starts from a head that already fits the features ("LP-FT", Kumar et al. 2022: a random head's
large early gradients distort the pretrained features)."""

from __future__ import annotations

import logging
import time
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from src.data import keys
from src.data.datasets import ImageDataset, collate_skip_none
from src.models.logistic_probe import LinearProbe, fit_logistic_probe

log = logging.getLogger(__name__)
PROBE_METRICS = ("val/acc", "val/f1")  # as ClassificationSystem logs them: micro accuracy, macro-F1


@torch.no_grad()
def net_features(net: torch.nn.Module, dataset, batch_size: int,
                 flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`net.features` (the head's input) of every image, in the net's current mode; `flip` adds mirrored copies."""
    feats, labels = [], []
    device = next(net.parameters()).device
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skip_none):
        if batch is None:
            continue
        images = batch[keys.IMAGE].to(device)
        for view in ([images, images.flip(-1)] if flip else [images]):
            feats.append(net.features(view).float().cpu())
            labels.append(batch[keys.LABEL])
    return torch.cat(feats), torch.cat(labels)


def probe_score(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor, metric: str) -> float:
    """`metric` ("val/acc" or "val/f1") of the probe, computed as the model's own validation metrics are."""
    preds, k = probe.logits(features).argmax(1), probe.weight.shape[0]
    fn = multiclass_accuracy if metric.endswith("acc") else multiclass_f1_score
    return float(fn(preds, labels, num_classes=k, average="micro" if metric.endswith("acc") else "macro"))


class LinearProbeHead(L.Callback):
    """Needs `pl_module.net` with `features(images)` and a `head` nn.Linear (src.nn.classifier_net.ClassifierNet)
    and an ImageClassificationDataModule (`split_samples`, `eval_transform`). Fits once per run on the training
    list with the eval transform (no augmentation), on the first of validate / fit; never when the run resumes or
    evaluates a checkpoint (`ckpt_path`), whose head is already trained.

    cs: scikit-learn's C values (inverse L2 strength on standardised features) tried; the one with the best
    `metric` on the validation list wins (ties: the smaller C). One value skips the validation pass."""

    def __init__(self, cs: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                 metric: str = "val/acc", max_iter: int = 200, flips: bool = False, batch_size: int = 64) -> None:
        self.cs = sorted(float(c) for c in cs)
        if not self.cs or self.cs[0] <= 0:
            raise ValueError(f"callbacks.probe_head.cs must be positive numbers, got {list(cs)}")
        if metric not in PROBE_METRICS:
            raise ValueError(f"callbacks.probe_head.metric must be one of {PROBE_METRICS}, got {metric!r}")
        self.metric, self.max_iter, self.flips, self.batch_size = metric, int(max_iter), flips, int(batch_size)
        self.done = False
        self.report_metrics: dict[str, float] = {}

    def on_validation_start(self, trainer, pl_module) -> None:
        self._fit_once(trainer, pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_once(trainer, pl_module)

    def _fit_once(self, trainer, pl_module) -> None:
        if self.done:
            return
        self.done = True
        if trainer.ckpt_path:
            return
        # Lightning validates under inference mode; the solve needs autograd and the head is written in place.
        with torch.inference_mode(False):
            self._fit(trainer, pl_module)

    def _features(self, net, dm, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return net_features(net, ImageDataset(dm.split_samples(split), dm.eval_transform, on_error=dm.on_error),
                            self.batch_size, flip=self.flips and split == "train")

    def _fit(self, trainer, pl_module) -> None:
        net, dm = pl_module.net, trainer.datamodule
        if not (hasattr(net, "features") and isinstance(getattr(net, "head", None), torch.nn.Linear)):
            raise TypeError(f"callbacks.probe_head needs model.net with features() and a Linear head "
                            f"(src.nn.classifier_net.ClassifierNet), got {type(net).__name__}")
        if not hasattr(dm, "split_samples"):
            raise TypeError(f"callbacks.probe_head needs an image classification datamodule, got {type(dm).__name__}")
        t0 = time.time()
        was_training = net.training
        net.eval()
        try:
            train = self._features(net, dm, "train")
            val = self._features(net, dm, "val") if len(self.cs) > 1 else None
        finally:
            net.train(was_training)
        probe, scores = self.select(train, val, net.head.out_features)
        # One head on every rank (each computed the same features; broadcast guards against float drift).
        weight, bias = trainer.strategy.broadcast((probe.weight, probe.bias), src=0)
        head, seen = net.head, probe.seen
        with torch.no_grad():
            head.weight[seen] = weight[seen].to(head.weight.device, head.weight.dtype)
            head.bias[seen] = bias[seen].to(head.bias.device, head.bias.dtype)
        c = max(scores, key=lambda k: (scores[k], -k)) if scores else self.cs[0]
        self.report_metrics = {"probe/c": c, "probe/train/acc": probe_score(probe, *train, "val/acc")}
        if not bool(seen.all()):
            log.warning("probe head: classes %s have no training images; their head rows keep their random init",
                        np.flatnonzero(~seen.numpy()).tolist())
        log.info("probe head: logistic regression on %d frozen training features (dim %d) in %.1f s; %s by C: %s; "
                 "the starting model is the probe with C=%g", len(train[1]), train[0].shape[1], time.time() - t0,
                 self.metric, {k: round(v, 4) for k, v in scores.items()}, c)

    def select(self, train, val, num_classes: int) -> tuple[LinearProbe, dict[float, float]]:
        """The probe with the best validation `metric` over `cs` (the smallest C on ties), and every C's score."""
        best, scores = None, {}
        for c in self.cs:
            probe = fit_logistic_probe(*train, num_classes, c=c, max_iter=self.max_iter)
            if val is None:
                return probe, {}
            scores[c] = probe_score(probe, *val, self.metric)
            if best is None or scores[c] > max(list(scores.values())[:-1]):
                best = probe
        return best, scores
