"""Retrieval evaluation as a Lightning callback: at the end of validation/test, gather the query and gallery
embeddings the model returned, search with Faiss and log recall@k (CMC), precision@k, mAP@k and mAP@R.

Thin adapter: the maths lives in `src.retrieval` (framework-free, tested against pytorch-metric-learning)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch

from src.callbacks.media import log_image
from src.callbacks.retrieval_grid import topk_grid
from src.data import keys
from src.retrieval.metrics import evaluate_retrieval
from src.retrieval.search import knn_search
from src.utils.distributed import all_gather_varlen

log = logging.getLogger(__name__)


class RetrievalEvaluation(L.Callback):
    """Expects the model's validation/test step to return {"embeddings", "label", "index"} per batch, with
    dataloader 0 = queries and dataloader 1 = gallery (when there is only one loader, the queries are their own
    gallery and self-matches are dropped). Only the current epoch's embeddings are held, never a query x gallery
    matrix: Faiss searches queries in chunks."""

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 4096, index: str = "Flat",
                 max_r: int = 1000, num_grid_queries: int = 6, grid_topk: int = 5, log_grid: bool = True) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.chunk_size, self.index, self.max_r = chunk_size, index, max_r
        self.num_grid_queries, self.grid_topk, self.log_grid = num_grid_queries, grid_topk, log_grid
        self._buffers: dict[int, dict[str, list[torch.Tensor]]] = {}
        self.last_metrics: dict[str, float] = {}

    # --- collection -----------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._buffers = {}

    def _collect(self, outputs: Any, dataloader_idx: int) -> None:
        if outputs is None:
            return
        buf = self._buffers.setdefault(dataloader_idx, {"embeddings": [], keys.LABEL: [], keys.INDEX: []})
        for k in buf:
            buf[k].append(outputs[k].detach().cpu())

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, dataloader_idx)

    def _gathered(self, pl_module, dataloader_idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        buf = self._buffers.get(dataloader_idx)
        if not buf or not buf["embeddings"]:
            dim = getattr(getattr(pl_module, "net", None), "embedding_dim", 1)
            emb, lab, idx = torch.zeros(0, dim), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        else:
            emb, lab, idx = (torch.cat(buf[k]) for k in ("embeddings", keys.LABEL, keys.INDEX))
        emb, lab, idx = (all_gather_varlen(t) for t in (emb, lab, idx))
        # DistributedSampler pads with repeated samples: keep one copy per dataset index, in index order.
        idx_np = idx.numpy()
        _, first = np.unique(idx_np, return_index=True)
        return emb.numpy()[first].astype(np.float32), lab.numpy()[first], idx_np[first]

    # --- evaluation -----------------------------------------------------------------------------------
    def _evaluate(self, trainer, pl_module, stage: str) -> None:
        if trainer.sanity_checking:
            return
        q_emb, q_lab, q_idx = self._gathered(pl_module, 0)
        separate_gallery = 1 in self._buffers or (trainer.world_size > 1 and self._num_loaders(trainer, stage) > 1)
        if separate_gallery:
            g_emb, g_lab, g_idx = self._gathered(pl_module, 1)
            ids = {}
        else:
            g_emb, g_lab, g_idx = q_emb, q_lab, q_idx
            ids = {"query_ids": q_idx, "gallery_ids": g_idx}
        if len(q_emb) == 0 or len(g_emb) == 0:
            raise ValueError(f"{stage}: retrieval evaluation got {len(q_emb)} queries and {len(g_emb)} gallery items")
        metrics = evaluate_retrieval(q_emb, q_lab, g_emb, g_lab, ks=self.ks, chunk_size=self.chunk_size,
                                     index=self.index, max_r=self.max_r, **ids)
        self.last_metrics = {f"{stage}/{k}": float(v) for k, v in metrics.items()}
        pl_module.log_dict(self.last_metrics, sync_dist=False, rank_zero_only=False)
        if self.log_grid and trainer.is_global_zero and self.num_grid_queries > 0:
            self._log_grid(trainer, stage, q_emb, q_lab, q_idx, g_emb, g_lab, g_idx, ids)

    @staticmethod
    def _num_loaders(trainer, stage: str) -> int:
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        return len(loaders) if isinstance(loaders, (list, tuple)) else 1

    def _log_grid(self, trainer, stage, q_emb, q_lab, q_idx, g_emb, g_lab, g_idx, ids) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "eval_dataset"):
            return
        try:
            q_ds = dm.eval_dataset(stage, 0)
            g_ds = dm.eval_dataset(stage, 1) if not ids else q_ds
        except (KeyError, TypeError):
            return
        n = min(self.num_grid_queries, len(q_emb))
        pick = np.linspace(0, len(q_emb) - 1, n).astype(int)
        sub_ids = {"query_ids": ids["query_ids"][pick], "gallery_ids": ids["gallery_ids"]} if ids else {}
        _, top = knn_search(q_emb[pick], g_emb, min(self.grid_topk, len(g_emb)), **sub_ids)
        grid = topk_grid([q_ds.samples[i].path for i in q_idx[pick]], q_lab[pick],
                         [g_ds.samples[i].path for i in g_idx], g_lab, top)
        log_image(trainer, f"{stage}/retrieval_top{self.grid_topk}", grid)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module, "test")

    def state_dict(self) -> dict[str, Any]:
        return {"last_metrics": dict(self.last_metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_metrics = dict(state_dict.get("last_metrics", {}))
