"""Counter photo -> receipt, and basket metrics on scenes with known contents.

Money is summed in integer cents (0.1 + 0.2 must print 0.30). Nothing is priced silently: boxes below the
open-set threshold are listed under ``unknown`` with their best guess and are not in the total; boxes above it
but within the look-alike margin of another SKU are listed under ``uncertain`` with both candidates and are not
in the total; a recognised product without a price in the gallery gets ``unit_price: null``. Each of these
makes the receipt incomplete (a cashier decides).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from src.recognition.pipeline import Recognition, RecognitionPipeline

__all__ = ["basket_metrics", "checkout", "make_receipt", "to_cents"]


def to_cents(price: float | None) -> int | None:
    return None if price is None else int(round(float(price) * 100))


def make_receipt(recognition: Recognition) -> dict[str, Any]:
    """``{items: [{sku, name, count, unit_price, line_total}], uncertain: [{box, score, margin, candidates:
    [{sku, name, price, score}, runner-up]}], unknown: [{box, best_guess, score}], total, complete,
    detections}``. ``total`` sums the items' lines only; ``complete`` is False when anything needs a cashier
    (uncertain, unknown or unpriced items); ``detections`` are the priced boxes (for drawing)."""
    lines: dict[str, dict[str, Any]] = {}
    for item in recognition.items:
        line = lines.setdefault(item["sku"], {"sku": item["sku"], "name": item["name"], "count": 0,
                                              "unit_cents": to_cents(item["price"])})
        line["count"] += 1
    items, total_cents, unpriced = [], 0, 0
    for line in sorted(lines.values(), key=lambda x: (x["name"] or "", x["sku"])):
        unit = line.pop("unit_cents")
        line_cents = None if unit is None else unit * line["count"]
        unpriced += unit is None
        total_cents += line_cents or 0
        items.append({**line, "unit_price": None if unit is None else unit / 100,
                      "line_total": None if line_cents is None else line_cents / 100})
    unknown = [{"box": u["box"], "best_guess": u["best_guess"], "score": u["score"]} for u in recognition.unknown]
    uncertain = [{"box": u["box"], "score": u["score"], "margin": u["margin"],
                  "candidates": [{k: u[k] for k in ("sku", "name", "price", "score")}]
                  + ([u["runner_up"]] if u["runner_up"] else [])} for u in recognition.uncertain]
    return {
        "items": items,
        "uncertain": uncertain,
        "unknown": unknown,
        "total": total_cents / 100,
        "complete": not unknown and not uncertain and not unpriced,
        "detections": [{"box": i["box"], "sku": i["sku"], "name": i["name"], "score": i["score"]}
                       for i in recognition.items],
    }


def checkout(pipeline: RecognitionPipeline, image: np.ndarray, boxes=None) -> dict[str, Any]:
    """Recognise a counter photo and price it; ``timings`` (ms) are added to the receipt."""
    rec = pipeline.recognize(image, boxes=boxes)
    return {**make_receipt(rec), "width": rec.width, "height": rec.height, "timings": rec.timings}


def basket_metrics(receipts: Sequence[Mapping[str, Any]], baskets: Sequence[Iterable[str]],
                   prices: Mapping[str, float]) -> dict[str, float]:
    """Scores of predicted receipts against true baskets (one SKU per product on the counter).

    * ``exact_basket_accuracy``: the receipt's SKU counts equal the basket's and nothing is unknown (the
      cashier would not have to touch it);
    * ``mean_abs_price_error`` / ``max_abs_price_error``: |receipt total - true total| (unknowns count 0);
    * ``item_precision`` / ``item_recall``: over product counts (multiset intersection);
    * ``unknown_per_scene``: mean unknown boxes per receipt; ``uncertain_per_scene`` the same for uncertain;
    * ``silent_wrong_lines``: priced products that are not on the counter (the multiset difference), and
      ``silent_wrong_rate`` = silent_wrong_lines / priced products (1 - item_precision).
    """
    if len(receipts) != len(baskets):
        raise ValueError(f"{len(receipts)} receipts but {len(baskets)} baskets")
    if not receipts:
        raise ValueError("no receipts to score")
    exact, errors, inter, n_pred, n_true, n_unknown, n_uncertain = 0, [], 0, 0, 0, 0, 0
    for receipt, basket in zip(receipts, baskets):
        truth = Counter(str(s) for s in basket)
        missing = [s for s in truth if s not in prices]
        if missing:
            raise KeyError(f"no price for true SKUs {sorted(missing)}")
        pred = Counter({line["sku"]: line["count"] for line in receipt["items"]})
        exact += pred == truth and not receipt["unknown"] and not receipt.get("uncertain")
        true_cents = sum(to_cents(prices[s]) * c for s, c in truth.items())
        errors.append(abs(to_cents(receipt["total"]) - true_cents) / 100)
        inter += sum((pred & truth).values())
        n_pred += sum(pred.values())
        n_true += sum(truth.values())
        n_unknown += len(receipt["unknown"])
        n_uncertain += len(receipt.get("uncertain", ()))
    return {
        "scenes": len(receipts),
        "exact_basket_accuracy": exact / len(receipts),
        "mean_abs_price_error": float(np.mean(errors)),
        "max_abs_price_error": float(np.max(errors)),
        "item_precision": inter / n_pred if n_pred else 0.0,
        "item_recall": inter / n_true if n_true else 0.0,
        "unknown_per_scene": n_unknown / len(receipts),
        "uncertain_per_scene": n_uncertain / len(receipts),
        "silent_wrong_lines": n_pred - inter,
        "silent_wrong_rate": (n_pred - inter) / n_pred if n_pred else 0.0,
    }
