import numpy as np
import pytest

from src.retrieval.threshold import far_frr, threshold_for_far

GENUINE = [0.95, 0.9, 0.8, 0.55, 0.35]
IMPOSTOR = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.05, 0.15, 0.25]  # 10 impostors


@pytest.mark.parametrize(
    "target, just_above, far, frr",
    [
        (0.0, 0.7, 0.0, 0.4),  # no false accept: just above the highest impostor; 0.55, 0.35 rejected
        (0.1, 0.6, 0.1, 0.4),  # one impostor (0.7) may pass
        (0.25, 0.5, 0.2, 0.2),  # floor(2.5) = 2 impostors (0.7, 0.6); now 0.55 is accepted
        (0.3, 0.4, 0.3, 0.2),  # 3 (0.3 * 10 = 3.0000000000000004 must still mean 3)
        (0.35, 0.4, 0.3, 0.2),  # floor(3.5) = 3
    ],
)
def test_hand_cases(target, just_above, far, frr):
    t = threshold_for_far(GENUINE, IMPOSTOR, target)
    assert t == np.nextafter(just_above, np.inf)  # the lowest float above the (m+1)-th impostor
    assert far_frr(GENUINE, IMPOSTOR, t) == pytest.approx((far, frr))
    assert far_frr(GENUINE, IMPOSTOR, just_above)[0] > target  # the impostor score itself is too low


def test_ties_are_accepted_or_rejected_together():
    # Two impostors tie at 0.5; allowing one false accept cannot split them, so both are rejected.
    t = threshold_for_far([0.9], [0.5, 0.5, 0.1], 1 / 3)
    assert t == np.nextafter(0.5, np.inf)
    assert far_frr([0.9], [0.5, 0.5, 0.1], t) == (0.0, 0.0)


def test_float_error_in_target_times_n():
    imp = np.linspace(0.0, 0.99, 100)[::-1].copy()  # 0.99, 0.98, ..., 0.0
    t = threshold_for_far([1.0], imp, 0.29)  # 0.29 * 100 = 28.999999999999996 -> 29 allowed
    assert far_frr([1.0], imp, t)[0] == pytest.approx(0.29)


def test_target_one_accepts_everything():
    assert threshold_for_far([0.3, 0.9], [0.1, 0.5], 1.0) == 0.1


def test_lowest_threshold_against_brute_force():
    rng = np.random.default_rng(0)
    gen = rng.normal(0.7, 0.1, size=200).astype(np.float32)
    imp = rng.normal(0.3, 0.1, size=300).astype(np.float32)
    for target in (0.0, 0.01, 0.05, 0.2):
        t = threshold_for_far(gen, imp, target)
        assert far_frr(gen, imp, t)[0] <= target
        # Every candidate below t (each distinct score below it) violates the target.
        below = np.unique(np.concatenate([gen, imp]).astype(np.float64))
        below = below[below < t]
        assert len(below) == 0 or far_frr(gen, imp, below.max())[0] > target


def test_errors():
    with pytest.raises(ValueError, match="target_far must be in"):
        threshold_for_far([0.9], [0.1], 1.5)
    with pytest.raises(ValueError, match="impostor_scores is empty"):
        threshold_for_far([0.9], [], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        threshold_for_far([0.9], [np.nan], 0.1)


def test_float32_scores_get_a_float32_threshold():
    # numpy 2 compares float32 arrays with a Python float in float32: the next float64 above a float32
    # impostor score would round back onto it and accept it. The threshold must be the next float32.
    imp = np.array([0.1, 0.7], dtype=np.float32)
    t = threshold_for_far(np.array([0.9], np.float32), imp, 0.0)
    assert t == float(np.nextafter(np.float32(0.7), np.float32(np.inf)))
    assert not (imp >= t).any()  # float32 comparison
    assert not (imp.astype(np.float64) >= t).any()  # float64 comparison
