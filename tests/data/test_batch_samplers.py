import math
from collections import Counter

import numpy as np
import pytest

from src.data.batch_samplers import AspectBucketResizeBatchSampler, PKBatchSampler, bucket_size


def test_pk_batches_have_p_identities_times_k():
    labels = np.repeat(np.arange(10), 5)
    sampler = PKBatchSampler(labels, p=4, k=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50 // 12
    for b in batches:
        counts = Counter(labels[b].tolist())
        assert len(counts) == 4 and set(counts.values()) == {3}
    assert list(PKBatchSampler(labels, 4, 3, seed=1)) == batches  # deterministic per (seed, epoch)
    assert list(sampler) != batches  # next epoch differs


@pytest.fixture
def aspects():
    rng = np.random.default_rng(0)
    return np.exp(rng.uniform(np.log(0.5), np.log(3.0), size=203))


def test_bucketed_batches_one_size_every_sample_once(aspects):
    s = AspectBucketResizeBatchSampler(aspects, batch_size=16, base_size=64, scales=(0.75, 1.0, 1.25),
                                      num_buckets=5, min_aspect=0.5, max_aspect=3.0, stride=8)
    seen, sizes = [], set()
    for batch in s:
        batch_sizes = {size for _, size in batch}
        assert len(batch_sizes) == 1  # no batch mixes sizes
        (h, w), = batch_sizes
        sizes.add((h, w))
        assert h % 8 == 0 and w % 8 == 0
        for i, _ in batch:
            # Aspect distortion bounded by the bucket width: at most sqrt(edge ratio) (+ stride rounding).
            distortion = max(aspects[i] / (h / w), (h / w) / aspects[i])
            bound = math.sqrt((3.0 / 0.5) ** (1 / 5))
            assert distortion <= bound * 1.2, (aspects[i], h, w)
        seen += [i for i, _ in batch]
    assert sorted(seen) == list(range(len(aspects)))  # every sample exactly once per epoch
    assert len(sizes) > 3  # several buckets x scales in use


def test_bucketed_composes_with_pk(aspects):
    labels = np.arange(len(aspects)) % 20
    # Identities keep one aspect (same package): make aspects a function of the label.
    asp = np.exp(np.linspace(np.log(0.6), np.log(2.8), 20))[labels]
    s = AspectBucketResizeBatchSampler(asp, base_size=64, labels=labels, pk=(3, 2), num_buckets=3,
                                      min_aspect=0.5, max_aspect=3.0, stride=8)
    batches = list(s)
    assert batches
    for batch in batches:
        counts = Counter(labels[[i for i, _ in batch]].tolist())
        assert len(counts) == 3 and set(counts.values()) == {2}
        assert len({size for _, size in batch}) == 1


def test_bucket_size_keeps_area_and_aspect():
    h, w = bucket_size(2.0, 224, stride=32)
    assert abs(h / w - 2.0) < 0.3 and abs(h * w - 224 * 224) / (224 * 224) < 0.15


def _indices(batch):
    """Dataset indices of a batch from either sampler (the bucketed one yields (index, size) pairs)."""
    return [x[0] if isinstance(x, tuple) else x for x in batch]


@pytest.mark.parametrize("make", [
    lambda asp, lab: PKBatchSampler(lab, p=4, k=2, seed=3),
    lambda asp, lab: AspectBucketResizeBatchSampler(asp, batch_size=8, base_size=64, stride=8, seed=3),
    lambda asp, lab: AspectBucketResizeBatchSampler(asp, base_size=64, labels=lab, pk=(2, 2), stride=8, seed=3),
])
def test_ddp_ranks_split_the_batches_and_len_counts_one_rank(monkeypatch, aspects, make):
    import src.data.batch_samplers as bs

    labels = np.arange(len(aspects)) % 25
    full = [_indices(b) for b in make(aspects, labels)]
    world, per_rank = 3, len(full) // 3
    for rank in range(world):
        monkeypatch.setattr(bs, "_world_and_rank", lambda rank=rank: (world, rank))
        sampler = make(aspects, labels)
        shard = [_indices(b) for b in sampler]
        # len() is one rank's share: LR schedules and progress bars count these steps.
        assert len(sampler) == len(shard) == per_rank
        # Rank r takes batches r, r + world, ...: together the ranks see the one-process epoch, nothing twice.
        assert shard == full[rank : world * per_rank : world]


def test_checkpoint_config_with_the_old_sampler_name_rebuilds(tmp_path):
    """Checkpoints written before the rename name AspectRatioBucketBatchSampler in their data config."""
    import torch
    from hydra.utils import instantiate

    from src.utils.checkpoint import CONFIG_KEY, config_from_checkpoint

    old = {"_target_": "src.data.batch_samplers.AspectRatioBucketBatchSampler", "_partial_": True, "batch_size": 4}
    torch.save({CONFIG_KEY: {"model": {}, "data": {"batch_sampler": old}}, "state_dict": {}}, tmp_path / "old.ckpt")
    sampler = instantiate(config_from_checkpoint(tmp_path / "old.ckpt").data.batch_sampler)(aspects=[1.0] * 8)
    assert isinstance(sampler, AspectBucketResizeBatchSampler) and len(sampler) == 2
