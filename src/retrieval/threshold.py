"""Open-set rejection threshold chosen on validation scores.

A match is accepted when ``score >= threshold``. On validation data, *genuine* scores are similarities
of queries to their true product and *impostor* scores those to products that are not in the query
(e.g. the top-1 score of queries whose product is absent from the gallery).

``FAR(t) = #{impostor >= t} / n_impostor`` (false-accept rate), ``FRR(t) = #{genuine < t} / n_genuine``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["far_frr", "threshold_for_far"]


def _scores(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def far_frr(genuine_scores, impostor_scores, threshold: float) -> tuple[float, float]:
    """``(FAR, FRR)`` at ``threshold`` (accept iff ``score >= threshold``); NaN for an empty set.

    >>> far_frr([0.9, 0.5], [0.6, 0.2, 0.1, 0.0], 0.55)
    (0.25, 0.5)
    """
    g = _scores(genuine_scores, "genuine_scores")
    i = _scores(impostor_scores, "impostor_scores")
    far = float((i >= threshold).mean()) if len(i) else float("nan")
    frr = float((g < threshold).mean()) if len(g) else float("nan")
    return far, frr


def threshold_for_far(genuine_scores, impostor_scores, target_far: float) -> float:
    """Lowest threshold with ``FAR <= target_far`` on the impostor scores.

    With ``n`` impostors, at most ``m = floor(target_far * n)`` of them may be accepted. Sorting
    impostors descending ``s_1 >= s_2 >= ...``, every ``t > s_{m+1}`` satisfies the target and
    ``t = s_{m+1}`` does not (it accepts ``s_{m+1}`` too), so the set of valid thresholds is the open
    interval ``(s_{m+1}, inf)``. We return its lowest float in the scores' precision,
    ``nextafter(s_{m+1}, +inf)``: float32 scores give the next float32 (numpy 2 compares a float32 array
    with a Python float in float32, where the next float64 would round back to ``s_{m+1}``), anything
    else the next float64. Either way ``score >= t`` is exactly ``score > s_{m+1}``. Lower thresholds accept more
    genuine matches, so this is also the threshold with the lowest FRR under the constraint. Ties
    among impostors are handled by the strict inequality: a tied group is accepted or rejected whole.

    If ``m >= n`` every threshold qualifies; the lowest meaningful one is the smallest validation
    score (everything accepted).

    Args:
        genuine_scores: validation scores of true matches (used for the accept-all case; report the
            resulting FRR with :func:`far_frr`).
        impostor_scores: validation scores of false matches; must not be empty.
        target_far: allowed false-accept rate in ``[0, 1]``.

    >>> t = threshold_for_far([0.9, 0.8], [0.1, 0.2, 0.3, 0.4], 0.25)
    >>> t > 0.3, t == float(np.nextafter(0.3, np.inf)), far_frr([0.9, 0.8], [0.1, 0.2, 0.3, 0.4], t)
    (True, True, (0.25, 0.0))
    """
    if not 0.0 <= target_far <= 1.0 or math.isnan(target_far):
        raise ValueError(f"target_far must be in [0, 1], got {target_far}")
    g = _scores(genuine_scores, "genuine_scores")
    imp = _scores(impostor_scores, "impostor_scores")
    precision = np.float32 if np.asarray(impostor_scores).dtype == np.float32 else np.float64
    if len(imp) == 0:
        raise ValueError("impostor_scores is empty: the false-accept rate is undefined")
    n = len(imp)
    # 1e-9 absorbs float error in target * n (0.29 * 100 = 28.999999999999996 must allow 29).
    m = math.floor(target_far * n + 1e-9)
    if m >= n:
        return float(np.concatenate([g, imp]).min())
    s = np.sort(imp)[::-1].astype(precision)  # exact: float32 values round-trip through float64
    return float(np.nextafter(s[m], precision(np.inf)))
