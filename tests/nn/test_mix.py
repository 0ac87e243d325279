"""BatchMix: targets are distributions; CutMix's label share equals the pasted area; Mixup mixes linearly."""

import pytest
import torch

from src.nn.mix import BatchMix

B, C, H, W = 4, 5, 16, 20


def constant_images():
    # image i is constant i+1: every pixel tells which image it came from
    return torch.arange(1, B + 1, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, H, W).clone()


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_label_share_matches_pasted_area(seed):
    torch.manual_seed(seed)
    mix = BatchMix(C, cutmix_alpha=1.0, cutmix_prob=1.0, mixup_prob=0.0)
    labels = torch.tensor([0, 1, 2, 3])
    images, target = mix(constant_images(), labels)
    assert mix.last["kind"] == "cutmix"
    assert torch.allclose(target.sum(1), torch.ones(B))
    for i in range(B):
        j = B - 1 - i  # partner: the batch in reverse order
        pasted = (images[i, 0] == j + 1).float().mean().item()
        kept = (images[i, 0] == i + 1).float().mean().item()
        assert kept + pasted == pytest.approx(1.0)
        assert target[i, labels[j]].item() == pytest.approx(pasted, abs=1e-6)
        assert target[i, labels[i]].item() == pytest.approx(kept, abs=1e-6)


def test_mixup_mixes_images_and_soft_targets_linearly():
    torch.manual_seed(0)
    mix = BatchMix(C, mixup_alpha=0.4, cutmix_prob=0.0, mixup_prob=1.0)
    soft = torch.softmax(torch.randn(B, C), -1)
    images, target = mix(constant_images(), soft)
    lam = mix.last["lam"]
    assert images[0, 0, 0, 0].item() == pytest.approx(lam * 1 + (1 - lam) * B, rel=1e-5)
    assert torch.allclose(target, lam * soft + (1 - lam) * soft.flip(0), atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(B))


def test_probability_zero_leaves_batch_alone_and_bad_config_fails():
    mix = BatchMix(C, cutmix_prob=0.0, mixup_prob=0.0)
    x = constant_images()
    images, target = mix(x, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(images, x) and torch.equal(target.argmax(1), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError):
        BatchMix(C, cutmix_prob=0.7, mixup_prob=0.5)
