import itertools

import pytest
import torch
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss, MultiSimilarityLoss

from src.losses.triplet_angular import TripletAngularMarginLoss
from src.losses.xbm import CrossBatchMemoryLoss


def _loop_triplet_angular(emb, labels, margin, ap_value, an_value, weight):
    """Direct per-anchor loop: the reference for the vectorised loss."""
    x = torch.nn.functional.normalize(emb, dim=-1)
    ranks, aps, ans = [], [], []
    for i in range(len(labels)):
        pos = [float(x[i] @ x[j]) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [float(x[i] @ x[j]) for j in range(len(labels)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        s_ap, s_an = min(pos), max(neg)
        ranks.append(max(0.0, s_an - s_ap + margin))
        aps.append(max(0.0, ap_value - s_ap))
        ans.append(max(0.0, s_an - an_value))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return mean(ranks) + weight * (mean(aps) + mean(ans))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_angular_matches_direct_loop(seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(12, 8, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 5])  # ids 3 and 5 have no positive: skipped
    loss = TripletAngularMarginLoss(margin=0.3, ap_value=0.8, an_value=0.4, absolute_loss_weight=0.7)
    expected = _loop_triplet_angular(emb, labels, 0.3, 0.8, 0.4, 0.7)
    assert float(loss(emb, labels)) == pytest.approx(expected, rel=1e-5)


def test_triplet_angular_zero_when_well_separated_and_no_triplets():
    emb = torch.eye(4).repeat_interleave(2, 0)  # identical within class, orthogonal across
    labels = torch.arange(4).repeat_interleave(2)
    assert float(TripletAngularMarginLoss(margin=0.5, ap_value=0.9, an_value=0.1)(emb, labels)) == pytest.approx(0.0)
    single = TripletAngularMarginLoss()(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2]))
    assert float(single) == 0.0 and single.requires_grad


def test_margin_zero_arcface_equals_scaled_cosine_softmax():
    torch.manual_seed(0)
    arc = ArcFaceLoss(num_classes=5, embedding_size=8, margin=0.0, scale=16)
    emb = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    labels = torch.randint(0, 5, (10,))
    w = torch.nn.functional.normalize(arc.W, dim=0)
    expected = torch.nn.functional.cross_entropy(16 * emb @ w, labels)
    assert float(arc(emb, labels)) == pytest.approx(float(expected), rel=1e-4)
    cos = CosFaceLoss(num_classes=5, embedding_size=8, margin=0.0, scale=16)
    cos.W.data.copy_(arc.W.data)
    assert float(cos(emb, labels)) == pytest.approx(float(expected), rel=1e-4)


def test_xbm_memory_is_a_buffer_and_survives_checkpoint_round_trip(tmp_path):
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), embedding_size=4, memory_size=6)
    for step in range(4):  # 8 items into a memory of 6: the oldest are overwritten, ring-buffer style
        xbm(torch.nn.functional.normalize(torch.randn(2, 4), dim=1), torch.tensor([step, step + 10]))
    assert int(xbm.filled) == 6 and int(xbm.ptr) == 2
    assert sorted(xbm.labels.tolist()) == [1, 2, 3, 11, 12, 13]
    torch.save(xbm.state_dict(), tmp_path / "x.pt")
    fresh = CrossBatchMemoryLoss(MultiSimilarityLoss(), embedding_size=4, memory_size=6)
    fresh.load_state_dict(torch.load(tmp_path / "x.pt", weights_only=True))
    for name in ("embeddings", "labels", "ptr", "filled", "calls"):
        assert torch.equal(getattr(fresh, name), getattr(xbm, name)), name


def test_xbm_adds_memory_term_equal_to_loss_against_reference():
    torch.manual_seed(0)
    ms = MultiSimilarityLoss()
    xbm = CrossBatchMemoryLoss(ms, embedding_size=4, memory_size=16)
    first = torch.nn.functional.normalize(torch.randn(4, 4), dim=1)
    l1 = torch.tensor([0, 0, 1, 1])
    assert float(xbm(first, l1)) == pytest.approx(float(ms(first, l1)))  # empty memory: plain loss
    second = torch.nn.functional.normalize(torch.randn(4, 4), dim=1)
    l2 = torch.tensor([1, 1, 2, 2])
    expected = ms(second, l2) + ms(second, l2, ref_emb=first, ref_labels=l1)
    assert float(xbm(second, l2)) == pytest.approx(float(expected))
    xbm.eval()
    xbm(second, l2)
    assert int(xbm.filled) == 8  # eval calls do not enqueue


def test_combined_losses_weighted_sum():
    from src.models.embedding import EmbeddingSystem

    class Net(torch.nn.Module):
        backbone = torch.nn.Identity()

    sys = EmbeddingSystem.__new__(EmbeddingSystem)
    torch.nn.Module.__init__(sys)
    sys.losses = torch.nn.ModuleDict({"a": TripletAngularMarginLoss(), "b": MultiSimilarityLoss()})
    sys.loss_weights = {"a": 0.25, "b": 2.0}
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    lab = torch.tensor([0, 0, 1, 1, 2, 2])
    parts = sys.compute_losses(emb, lab)
    assert float(parts["loss"]) == pytest.approx(0.25 * float(parts["a"]) + 2.0 * float(parts["b"]))
    assert list(itertools.islice(parts, 2)) == ["a", "b"]
