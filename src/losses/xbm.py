"""Cross-batch memory (Wang et al., XBM, CVPR 2020) around any pair loss that accepts reference embeddings.

The memory is a set of registered buffers, so checkpoints, `.to()` and DDP carry it (pytorch-metric-learning's
CrossBatchMemory keeps it as plain attributes, which checkpoints lose). Under DDP the batch embeddings of all
ranks are gathered before they enter the memory, so every rank holds the same memory."""

from __future__ import annotations

import torch
from torch import nn

from src.utils.distributed import all_gather_varlen


class CrossBatchMemoryLoss(nn.Module):
    """loss(batch, batch) + loss(batch, memory) where `loss(emb, labels, ref_emb=..., ref_labels=...)` follows
    pytorch-metric-learning's signature (e.g. MultiSimilarityLoss, ContrastiveLoss). The memory only starts to
    count after `start_after` calls (XBM's warm-up: early embeddings drift too fast to be useful negatives)."""

    def __init__(self, loss: nn.Module, embedding_size: int, memory_size: int = 1024, start_after: int = 0) -> None:
        super().__init__()
        self.loss = loss
        self.memory_size = memory_size
        self.start_after = start_after
        self.register_buffer("embeddings", torch.zeros(memory_size, embedding_size))
        self.register_buffer("labels", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        emb, lab = all_gather_varlen(embeddings.detach()), all_gather_varlen(labels.detach())
        n = min(emb.shape[0], self.memory_size)
        emb, lab = emb[-n:], lab[-n:]
        idx = (self.ptr + torch.arange(n, device=emb.device)) % self.memory_size
        self.embeddings[idx] = emb.to(self.embeddings.dtype)
        self.labels[idx] = lab
        self.ptr.copy_((self.ptr + n) % self.memory_size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.memory_size))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss(embeddings, labels)
        if self.calls >= self.start_after and self.filled > 0:
            n = int(self.filled)
            ref = self.embeddings[:n].to(embeddings.dtype)
            loss = loss + self.loss(embeddings, labels, ref_emb=ref, ref_labels=self.labels[:n])
        if self.training:
            self.enqueue(embeddings, labels)
            self.calls += 1
        return loss
