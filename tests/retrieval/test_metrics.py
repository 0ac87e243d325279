import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from src.retrieval.metrics import evaluate_retrieval, num_relevant_from_labels, retrieval_metrics
from src.retrieval.search import l2_normalize

from .conftest import clustered

PML_METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "mean_average_precision")


def _pml(query, query_labels, reference=None, reference_labels=None):
    calc = AccuracyCalculator(include=PML_METRICS, k="max_bin_count", device=torch.device("cpu"))
    return calc.get_accuracy(query, query_labels, reference, reference_labels)


def _reference_metrics(q, g, topk, ks, r):
    """Loop-by-loop transcription of the definitions (independent of the vectorised code)."""
    out = {}
    rows = []
    for qi in range(len(q)):
        rel = [int(j >= 0 and g[j] == q[qi]) for j in topk[qi]]
        rows.append(rel)
    for k in ks:
        out[f"recall@{k}"] = np.mean([float(any(rel[:k])) for rel in rows])
        out[f"precision@{k}"] = np.mean([sum(rel[:k]) / k for rel in rows])
        aps = []
        for rel, rq in zip(rows, r):
            if rq == 0:
                continue
            hits, total = 0, 0.0
            for i, x in enumerate(rel[:k], start=1):
                if x:
                    hits += 1
                    total += hits / i
            aps.append(total / min(k, rq))
        out[f"map@{k}"] = np.mean(aps) if aps else math.nan
    aps, rps = [], []
    for rel, rq in zip(rows, r):
        if rq == 0:
            continue
        hits, total = 0, 0.0
        for i, x in enumerate(rel[:rq], start=1):
            if x:
                hits += 1
                total += hits / i
        aps.append(total / rq)
        rps.append(hits / rq)
    out["map@r"], out["r_precision"] = np.mean(aps), np.mean(rps)
    return out


# ----------------------------------------------------------------------------- hand-computed cases
def test_hand_computed_every_metric():
    # Query 0 (label 0, R=2): hits at ranks 1 and 3. Query 1 (label 1, R=1): hit at rank 3.
    # Query 2 (label 5, R=0): no relevant item anywhere.
    m = retrieval_metrics([0, 1, 5], [0, 0, 1, 2], np.array([[1, 2, 0], [0, 3, 2], [0, 1, 2]]), ks=(1, 2, 3))
    expected = {
        "recall@1": 1 / 3,  # only query 0; query 2 counts as a miss
        "recall@2": 1 / 3,
        "recall@3": 2 / 3,
        "precision@1": 1 / 3,
        "precision@2": (1 / 2) / 3,
        "precision@3": (2 / 3 + 1 / 3) / 3,
        "map@1": (1 + 0) / 2,  # query 2 excluded: AP@k = sum P(i) rel_i / min(k, R)
        "map@2": (1 / 2 + 0) / 2,  # q0: P(1)=1 over min(2,2)=2
        "map@3": ((1 + 2 / 3) / 2 + (1 / 3) / 1) / 2,
        "map@r": (1 / 2 + 0) / 2,  # q0: R=2, ranks 1-2: P(1)=1 -> 1/2; q1: R=1, rank 1 misses
        "r_precision": (1 / 2 + 0) / 2,
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_hand_computed_map_at_r_musgrave_example():
    # R=4 relevant items, hits at ranks 1, 3, 4: AP@R = (1 + 2/3 + 3/4) / 4 (Musgrave et al., eq. for MAP@R).
    m = retrieval_metrics([7], [7, 7, 7, 7, 1, 2], np.array([[0, 4, 1, 2, 5, 3]]), ks=(1,))
    assert m["map@r"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)
    assert m["r_precision"] == pytest.approx(3 / 4)


def test_padding_counts_as_miss_and_no_relevant_queries():
    # -1 = no result (small gallery / self-match removed): never a hit, still in the precision denominator.
    m = retrieval_metrics([0], [0, 1], np.array([[1, -1, -1]]), ks=(3,))
    assert m == {"recall@3": 0.0, "precision@3": 0.0, "map@3": 0.0, "map@r": 0.0, "r_precision": 0.0}
    m = retrieval_metrics([9, 9], [0, 1], np.array([[0], [1]]), ks=(1,))
    assert m["recall@1"] == 0.0 and m["precision@1"] == 0.0
    assert math.isnan(m["map@r"]) and math.isnan(m["map@1"]) and math.isnan(m["r_precision"])


def test_num_relevant_from_labels_with_strings_and_self_exclusion():
    assert num_relevant_from_labels(["a", "b", "z"], ["a", "a", "b"]).tolist() == [2, 1, 0]
    labels = np.array([3, 3, 3, 4])
    ids = np.arange(4)
    assert num_relevant_from_labels(labels, labels, query_ids=ids, gallery_ids=ids).tolist() == [2, 2, 2, 0]


def test_vectorised_equals_loop_reference_on_random_topk():
    rng = np.random.default_rng(3)
    g = rng.integers(0, 6, size=40)
    q = rng.integers(0, 8, size=60)  # labels 6, 7 never occur in the gallery
    topk = np.stack([rng.permutation(40)[:15] for _ in range(60)])
    topk[rng.random(topk.shape) < 0.05] = -1
    topk = np.sort(topk, axis=1)[:, ::-1].copy()  # any order is fine; -1s go last here
    r = num_relevant_from_labels(q, g)
    got = retrieval_metrics(q, g, topk, ks=(1, 4, 15))
    want = _reference_metrics(q, g, topk, (1, 4, 15), r)
    for key in want:
        assert got[key] == pytest.approx(want[key]), key


def test_input_errors():
    with pytest.raises(ValueError, match="exceeds the 2 searched"):
        retrieval_metrics([0], [0, 1], np.array([[0, 1]]), ks=(1, 5))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 2\)"):
        retrieval_metrics([0], [0, 1], np.array([[0, 2]]), ks=(1,))
    with pytest.raises(ValueError, match="n_queries=2"):
        retrieval_metrics([0, 1], [0, 1], np.array([[0, 1]]), ks=(1,))


# ----------------------------------------------------------------------------- oracle: pytorch-metric-learning
def test_matches_pml_separate_query_and_gallery():
    centres = l2_normalize(np.random.default_rng(10).normal(size=(12, 24)))
    gallery, g_labels, _ = clustered(300, 24, 12, 1.2, seed=11, centres=centres)
    query, q_labels, _ = clustered(150, 24, 12, 1.2, seed=12, centres=centres)
    ours = evaluate_retrieval(query, q_labels, gallery, g_labels, ks=(1, 5), chunk_size=64)
    pml = _pml(query, q_labels, gallery, g_labels)
    assert 0.2 < pml["mean_average_precision_at_r"] < 0.9  # noisy enough that the metric is informative
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-9)
    # pml's mean_average_precision over K = max R columns divides by R: our map@K when every R <= K.
    k = int(num_relevant_from_labels(q_labels, g_labels).max())
    ours_k = evaluate_retrieval(query, q_labels, gallery, g_labels, ks=(k,))
    assert ours_k[f"map@{k}"] == pytest.approx(pml["mean_average_precision"], abs=1e-9)


def test_matches_pml_query_equals_gallery():
    x, labels, _ = clustered(250, 16, 9, 1.0, seed=13)
    ids = np.arange(len(x))
    ours = evaluate_retrieval(x, labels, x, labels, ks=(1,), query_ids=ids, gallery_ids=ids, chunk_size=100)
    pml = _pml(x, labels)  # reference=None -> ref_includes_query=True (self removed by pml)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-9)


@pytest.mark.parametrize("same_source", [False, True])
def test_matches_pml_with_tied_embeddings(same_source):
    # Many exactly identical vectors. faiss (ours, inner product) and pml (faiss L2) may order a tie
    # group differently, so every tie group carries one label: any order of the group gives the same
    # label sequence and the metrics are tie-invariant. Groups of different labels are far apart.
    rng = np.random.default_rng(14)
    group_vectors = l2_normalize(rng.normal(size=(30, 8)))
    group_labels = np.arange(30) % 6  # 5 groups per label
    group_of = np.repeat(np.arange(30), rng.integers(1, 7, size=30))  # 1-6 copies of each vector
    x, labels = group_vectors[group_of], group_labels[group_of]
    if same_source:
        ids = np.arange(len(x))
        ours = evaluate_retrieval(x, labels, x, labels, ks=(1,), query_ids=ids, gallery_ids=ids)
        pml = _pml(x, labels)
    else:
        q = rng.permutation(len(x))[:40]
        ours = evaluate_retrieval(x[q], labels[q], x, labels, ks=(1,))
        pml = _pml(x[q], labels[q], x, labels)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-9)


def test_queries_without_relevant_items_vs_pml():
    # pml drops "lone" queries from every metric; we count them as misses in recall@k and drop them
    # from map@r / r_precision.
    centres = l2_normalize(np.random.default_rng(15).normal(size=(8, 16)))
    gallery, g_labels, _ = clustered(200, 16, 6, 0.8, seed=16, centres=centres[:6])
    query, q_labels, _ = clustered(120, 16, 8, 0.8, seed=17, centres=centres)  # labels 6, 7: no gallery item
    lone = np.isin(q_labels, [6, 7])
    assert 0 < lone.sum() < len(q_labels)
    ours = evaluate_retrieval(query, q_labels, gallery, g_labels, ks=(1,))
    pml = _pml(query, q_labels, gallery, g_labels)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"] * (~lone).mean(), abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-9)


def test_max_r_cap_gives_lower_bound():
    x, labels, _ = clustered(200, 16, 4, 1.0, seed=18)  # R ~ 50 per query
    ids = np.arange(len(x))
    exact = evaluate_retrieval(x, labels, x, labels, ks=(1,), query_ids=ids, gallery_ids=ids)
    big = evaluate_retrieval(x, labels, x, labels, ks=(1,), query_ids=ids, gallery_ids=ids, max_r=1000)
    capped = evaluate_retrieval(x, labels, x, labels, ks=(1,), query_ids=ids, gallery_ids=ids, max_r=10)
    assert exact == big
    assert capped["map@r"] < exact["map@r"] and capped["r_precision"] < exact["r_precision"]
    assert capped["recall@1"] == exact["recall@1"]
