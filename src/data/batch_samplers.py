"""Batch samplers for metric learning: P x K identity batches and aspect-ratio bucketed multi-scale batches.

Both yield lists of dataset indices; the bucketed sampler yields `(index, (h, w))` pairs so the dataset resizes
every crop of a batch to the one size chosen for that batch (see `datasets.ImageDataset`)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _world_and_rank() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


def _shard(batches: list) -> list:
    """Under DDP each rank takes every world_size-th batch (same count on every rank). Lightning cannot inject a
    DistributedSampler into a custom batch sampler, so these samplers shard themselves
    (set `trainer.use_distributed_sampler=false`)."""
    world, rank = _world_and_rank()
    n = len(batches) // world
    return batches[rank : n * world : world]


def _sharded_len(num_batches: int) -> int:
    """Batches one rank yields: what the LR schedule's step count and the progress bar must see."""
    return num_batches // _world_and_rank()[0]


def _pk_batches(indices: np.ndarray, labels: np.ndarray, p: int, k: int, rng: np.random.Generator,
                num_batches: int) -> list[list[int]]:
    """`num_batches` batches of p identities x k samples (with replacement when an identity has fewer than k)."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        by_label[int(labels[i])].append(int(i))
    ids = np.array(sorted(by_label))
    if len(ids) == 0:
        return []
    p = min(p, len(ids))
    batches = []
    for _ in range(num_batches):
        batch = []
        for lbl in rng.choice(ids, size=p, replace=False):
            pool = by_label[int(lbl)]
            batch += [int(x) for x in rng.choice(pool, size=k, replace=len(pool) < k)]
        batches.append(batch)
    return batches


class PKBatchSampler(Sampler[list[int]]):
    """P identities x K instances per batch; an epoch has len(labels) // (P*K) batches (at least one)."""

    def __init__(self, labels: Sequence[int], p: int = 8, k: int = 4, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.num_batches = max(1, len(self.labels) // (p * k))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return _sharded_len(self.num_batches)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        yield from _shard(_pk_batches(np.arange(len(self.labels)), self.labels, self.p, self.k, rng, self.num_batches))


def bucket_edges(num_buckets: int, min_aspect: float, max_aspect: float) -> np.ndarray:
    """Bucket boundaries equally spaced in log(h / w)."""
    return np.exp(np.linspace(math.log(min_aspect), math.log(max_aspect), num_buckets + 1))


def bucket_size(aspect: float, side: int, stride: int = 32) -> tuple[int, int]:
    """(h, w) with h / w ~= aspect and h * w ~= side^2, both multiples of `stride` (backbone down-sampling)."""
    h = max(stride, int(round(side * math.sqrt(aspect) / stride)) * stride)
    w = max(stride, int(round(side / math.sqrt(aspect) / stride)) * stride)
    return h, w


class AspectBucketResizeBatchSampler(Sampler[list[tuple[int, tuple[int, int]]]]):
    """Groups crops by aspect ratio (h / w) into log-spaced buckets and yields `(index, (h, w))` pairs: every
    batch comes from one bucket and is resized to that bucket's shape at a scale drawn from `scales`, so no crop
    is squashed to a square and no batch mixes sizes. Distortion of any crop is at most sqrt(bucket width ratio).

    With `pk=(P, K)` the batches inside each bucket are P x K identity batches (composes with metric learning);
    otherwise every sample appears exactly once per epoch (`drop_last=False`)."""

    def __init__(self, aspects: Sequence[float], batch_size: int = 32, base_size: int = 224,
                 scales: Sequence[float] = (1.0,), num_buckets: int = 5, min_aspect: float = 0.5,
                 max_aspect: float = 3.0, stride: int = 32, labels: Sequence[int] | None = None,
                 pk: Sequence[int] | None = None, drop_last: bool = False, seed: int = 0) -> None:
        self.aspects = np.clip(np.asarray(aspects, dtype=np.float64), min_aspect, max_aspect)
        self.edges = bucket_edges(num_buckets, min_aspect, max_aspect)
        # Bucket centre = geometric mean of its edges.
        self.centres = np.sqrt(self.edges[:-1] * self.edges[1:])
        self.bucket_of = np.clip(np.searchsorted(self.edges, self.aspects, side="right") - 1, 0, num_buckets - 1)
        self.batch_size, self.base_size, self.scales, self.stride = batch_size, base_size, tuple(scales), stride
        self.labels = None if labels is None else np.asarray(labels)
        self.pk = tuple(pk) if pk else None
        if self.pk and self.labels is None:
            raise ValueError("pk batches need labels")
        self.drop_last, self.seed, self.epoch = drop_last, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        out = []
        for b in range(len(self.centres)):
            idx = np.flatnonzero(self.bucket_of == b)
            if len(idx) == 0:
                continue
            if self.pk:
                p, k = self.pk
                n = max(1, len(idx) // (p * k)) if len(idx) >= 2 * k else 0
                out += [(b, batch) for batch in _pk_batches(idx, self.labels, p, k, rng, n)]
            else:
                idx = rng.permutation(idx)
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    if len(chunk) < self.batch_size and self.drop_last:
                        continue
                    out.append((b, [int(i) for i in chunk]))
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def __len__(self) -> int:
        return _sharded_len(len(self._batches(np.random.default_rng([self.seed, self.epoch]))))

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for b, batch in _shard(self._batches(rng)):
            scale = self.scales[int(rng.integers(len(self.scales)))]
            size = bucket_size(self.centres[b], int(self.base_size * scale), self.stride)
            yield [(i, size) for i in batch]
