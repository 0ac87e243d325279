"""The references a fine-tuning run is judged against, computed on the run's own splits before it trains:

* `zero_shot/`: plain pretrained features: the backbone's feature map mean-pooled, L2-normalised, searched
  with exact kNN (no neck, no training);
* `linear_probe/`: an identity-initialised linear map on those frozen features, trained with ArcFace on the
  training split (with flips), chosen on validation (`src.models.linear_probe`).

With `init_neck=True` the probe's map is then written into the model's LinearNeck: fine-tuning starts from the
linear probe (LP-FT, Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution"), so the frozen-backbone warm-up epoch is the probe and model selection can return it.

Metrics land in `report_metrics` (read by `src.train` into the run's table and summary) and in the loggers."""

from __future__ import annotations

import logging
import time

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from src.data import keys
from src.data.datasets import ImageDataset, collate_skip_none
from src.models.linear_probe import fit_linear_probe, project
from src.retrieval.metrics import evaluate_retrieval

log = logging.getLogger(__name__)


@torch.no_grad()
def pooled_features(backbone: torch.nn.Module, dataset, batch_size: int = 64,
                    flip: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Mean-pooled `forward_features` (the backbone's own pooling) of every image; `flip` adds mirrored copies."""
    feats, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skip_none):
        if batch is None:
            continue
        images = batch[keys.IMAGE]
        views = [images, images.flip(-1)] if flip else [images]
        for v in views:
            feats.append(backbone.forward_features(v).float().mean(dim=(-2, -1)))
            labels.append(batch[keys.LABEL].numpy())
    return torch.cat(feats), np.concatenate(labels)


class PretrainedBaselines(L.Callback):
    """For RetrievalDataModule runs (`eval_dataset`, `dataset("train")`, `eval_transform`). `probe_steps=0`
    skips the linear probe. Runs once, on rank 0, at the start of a fresh fit (not on resume)."""

    def __init__(self, ks=(1, 5, 10), probe_steps: int = 100, probe_lr: float = 1e-3, probe_eval_every: int = 10,
                 flips: bool = True, batch_size: int = 64, init_neck: bool = False) -> None:
        self.ks = tuple(ks)
        self.init_neck = init_neck
        self.probe_neck: torch.nn.Module | None = None
        self.probe_steps, self.probe_lr, self.probe_eval_every = probe_steps, probe_lr, probe_eval_every
        self.flips, self.batch_size = flips, batch_size
        self.report_metrics: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path or trainer.fast_dev_run:
            return
        if trainer.is_global_zero:
            self._measure_and_log(trainer, pl_module)
        if self.init_neck:  # every rank starts from rank 0's probe
            probe = self.probe_neck.fc.weight.detach() if self.probe_neck is not None else None
            weight = trainer.strategy.broadcast(probe, src=0)
            if weight is not None:
                self._write_probe_into(pl_module.net.neck, weight)

    def _measure_and_log(self, trainer, pl_module) -> None:
        t0 = time.time()
        backbone = pl_module.net.backbone
        was_training = backbone.training
        backbone.eval()
        try:
            self.report_metrics = self._measure(trainer.datamodule, backbone)
        finally:
            backbone.train(was_training)
        for lg in trainer.loggers:
            lg.log_metrics(self.report_metrics, step=0)
        log.info("baselines in %.0f s: %s", time.time() - t0,
                 {k: round(v, 4) for k, v in self.report_metrics.items() if k.endswith("recall@1")})

    @staticmethod
    def _write_probe_into(neck: torch.nn.Module, weight: torch.Tensor) -> None:
        target = getattr(neck, "fc", None)
        if not isinstance(target, torch.nn.Linear) or target.weight.shape != weight.shape:
            raise ValueError(f"init_neck: the model's neck must be a LinearNeck of shape {tuple(weight.shape)} "
                             f"(model.net.neck, model.net.embedding_dim), got {neck}")
        with torch.no_grad():
            target.weight.copy_(weight.to(target.weight))
            if target.bias is not None:
                target.bias.zero_()
        log.info("fine-tuning starts from the linear probe (its map written into the model's neck)")

    def _split(self, dm, backbone, stage: str):
        q, g = dm.eval_dataset(stage, 0), dm.eval_dataset(stage, 1)
        return (pooled_features(backbone, q, self.batch_size), pooled_features(backbone, g, self.batch_size))

    def _metrics(self, split, transform=None) -> dict[str, float]:
        (qf, ql), (gf, gl) = split
        q = F.normalize(qf, dim=1).numpy() if transform is None else transform(qf)
        g = F.normalize(gf, dim=1).numpy() if transform is None else transform(gf)
        return evaluate_retrieval(q, ql, g, gl, ks=self.ks)

    def _measure(self, dm, backbone) -> dict[str, float]:
        splits = {stage: self._split(dm, backbone, stage) for stage in ("val", "test")}
        out = {f"zero_shot/{stage}/{k}": float(v) for stage, split in splits.items()
               for k, v in self._metrics(split).items()}
        if self.probe_steps > 0:
            train = ImageDataset(dm.dataset("train").samples, dm.eval_transform, on_error=dm.on_error)
            tf, tl = pooled_features(backbone, train, self.batch_size, flip=self.flips)

            def val_score(neck) -> float:
                return self._metrics(splits["val"], lambda f: project(neck, f))["recall@1"]

            neck, history = fit_linear_probe(tf, torch.from_numpy(tl), val_score, steps=self.probe_steps,
                                             lr=self.probe_lr, eval_every=self.probe_eval_every)
            self.probe_neck = neck
            log.info("linear probe val recall@1 by step: %s", [(s, round(v, 4)) for s, v in history])
            out.update({f"linear_probe/{stage}/{k}": float(v) for stage, split in splits.items()
                        for k, v in self._metrics(split, lambda f: project(neck, f)).items()})
        return out


class PixelBaselines(L.Callback):
    """For ImageClassificationDataModule runs: `pixel_logreg/{val,test}/{acc,f1}`, a logistic regression on raw
    grey pixels (`image_size` x `image_size`) of at most `train_per_class` training images per class, measured on
    the run's own val and test lists before it trains (src.models.pixel_baseline). Runs once, on rank 0, at the
    start of a fresh fit (not on resume); `src.train` prints it beside the returned model."""

    def __init__(self, train_per_class: int | None = 2000, image_size: int = 28, c: float = 0.1,
                 max_iter: int = 200, seed: int = 0) -> None:
        self.train_per_class, self.image_size, self.c, self.max_iter = train_per_class, image_size, c, max_iter
        self.seed = seed
        self.report_metrics: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path or trainer.fast_dev_run or not trainer.is_global_zero:
            return
        from src.models.pixel_baseline import (accuracy_and_macro_f1, fit_pixel_baseline, per_class_subset,
                                               pixel_matrix)

        t0 = time.time()
        dm = trainer.datamodule
        train = dm.split_samples("train")
        labels = np.array([s.label for s in train])
        keep = per_class_subset(labels, self.train_per_class, self.seed)
        x = pixel_matrix([train[i].path for i in keep], self.image_size)
        model = fit_pixel_baseline(x, labels[keep], c=self.c, max_iter=self.max_iter)
        out = {}
        for stage in ("val", "test"):
            samples = dm.split_samples(stage)
            pred = model.predict(pixel_matrix([s.path for s in samples], self.image_size))
            y = np.array([s.label for s in samples])
            out.update({f"pixel_logreg/{stage}/{k}": v for k, v in accuracy_and_macro_f1(y, pred).items()})
        self.report_metrics = out
        for lg in trainer.loggers:
            lg.log_metrics(out, step=0)
        log.info("pixel logistic regression on %d training images in %.0f s: %s", keep.size, time.time() - t0,
                 {k: round(v, 4) for k, v in out.items()})


class FeatureProbeBaselines(L.Callback):
    """For ImageClassificationDataModule runs: `linear_probe/{val,test}/{acc,f1}`, a logistic regression on
    frozen pretrained features (EfficientNet-Lite0, the packaged ImageNet weights: mean-pooled feature map of
    each image resized to `image_size`) of at most `train_per_class` training images per class, measured on the
    run's own val and test lists before it trains. The reference a trained classifier must beat when a
    pretrained network is at hand; `src.train` and `src.eval` print it beside the model."""

    def __init__(self, train_per_class: int | None = 500, image_size: int = 64, c: float = 1.0,
                 max_iter: int = 500, batch_size: int = 128, seed: int = 0) -> None:
        self.train_per_class, self.image_size, self.c, self.max_iter = train_per_class, image_size, c, max_iter
        self.batch_size, self.seed = batch_size, seed
        self.report_metrics: dict[str, float] = {}

    def _features(self, backbone, samples) -> tuple[np.ndarray, np.ndarray]:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        transform = A.Compose([A.Resize(self.image_size, self.image_size), A.Normalize(), ToTensorV2()])
        feats, labels = pooled_features(backbone, ImageDataset(samples, transform, on_error="raise"), self.batch_size)
        return F.normalize(feats, dim=1).numpy(), labels

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path or trainer.fast_dev_run or not trainer.is_global_zero:
            return
        from src.models.pixel_baseline import accuracy_and_macro_f1, per_class_subset
        from src.nn.pretrained import efficientnet_lite_backbone

        t0 = time.time()
        dm = trainer.datamodule
        backbone = efficientnet_lite_backbone(pretrained=True).eval()
        train = dm.split_samples("train")
        keep = per_class_subset(np.array([s.label for s in train]), self.train_per_class, self.seed)
        x, y = self._features(backbone, [train[i] for i in keep])
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.c, max_iter=self.max_iter).fit(x, y)
        out = {}
        for stage in ("val", "test"):
            xs, ys = self._features(backbone, dm.split_samples(stage))
            scores = accuracy_and_macro_f1(ys, model.predict(xs))
            out.update({f"linear_probe/{stage}/{k}": v for k, v in scores.items()})
        self.report_metrics = out
        for lg in trainer.loggers:
            lg.log_metrics(out, step=0)
        log.info("frozen Lite0 feature probe on %d training images in %.0f s: %s", keep.size, time.time() - t0,
                 {k: round(v, 4) for k, v in out.items()})
