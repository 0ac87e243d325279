"""Weight imprinting for margin heads (Qi et al., "Low-Shot Learning with Imprinted Weights", 2018): before a
fine-tuning run trains, each class weight of an ArcFace/CosFace head is set to the normalised mean embedding of
that class's training images. The head then starts as the nearest-class-mean classifier of the pretrained
embedding, so its first gradients refine the embedding instead of chasing random class directions."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.nn import functional as F

from src.data import keys
from src.models.linear_probe import imprint_class_weights

log = logging.getLogger(__name__)


class ImprintMarginHeads(L.Callback):
    """Imprints every loss module of `pl_module.losses` with a `W` parameter of shape [embedding_dim, classes]
    (pytorch-metric-learning's ArcFaceLoss, CosFaceLoss, SubCenter... with one centre). One pass over the
    training loader with the model in eval mode; runs at the start of a fresh fit only (not on resume)."""

    def __init__(self, max_batches: int | None = None) -> None:
        self.max_batches = max_batches

    @torch.no_grad()
    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path or trainer.fast_dev_run:
            return
        heads = {n: m for n, m in pl_module.losses.items()
                 if isinstance(getattr(m, "W", None), torch.nn.Parameter) and m.W.dim() == 2}
        if not heads:
            return
        was_training = pl_module.training
        pl_module.eval()
        embs, labels = [], []
        for i, batch in enumerate(trainer.datamodule.train_dataloader()):
            if batch is None:
                continue
            if self.max_batches is not None and i >= self.max_batches:
                break
            embs.append(F.normalize(pl_module.net.embed_raw(batch[keys.IMAGE].to(pl_module.device)).float(), dim=1))
            labels.append(batch[keys.LABEL].to(pl_module.device))
        pl_module.train(was_training)
        emb, lab = torch.cat(embs).cpu(), torch.cat(labels).cpu()
        for name, head in heads.items():
            dim, classes = head.W.shape
            if dim != emb.shape[1] or lab.max() >= classes:
                raise ValueError(f"cannot imprint loss {name!r}: W is {tuple(head.W.shape)}, embeddings have "
                                 f"{emb.shape[1]} dims and labels up to {int(lab.max())}")
            w = trainer.strategy.broadcast(imprint_class_weights(emb, lab, classes), src=0)  # one W on every rank
            seen = torch.zeros(classes, dtype=torch.bool)
            seen[lab.unique()] = True
            head.W.data[:, seen] = w[:, seen].to(head.W.device, head.W.dtype)  # unseen classes keep their init
            log.info("imprinted %s: %d of %d classes from %d training embeddings", name, int(seen.sum()), classes,
                     len(lab))
