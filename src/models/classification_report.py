"""Classification report: accuracy, macro-F1, per-class recall and confusion-matrix pictures (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from src.utils.io import atomic_write_json, atomic_write_text
from src.utils.media import figure_rgb, save_png


def summarize(confusion: np.ndarray, class_names: list[str] | None = None) -> dict:
    """From a confusion matrix (rows: true class, columns: predicted): accuracy, macro-F1 over classes present
    in truth or prediction, per-class recall/precision/F1 and support."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(recall + precision > 0, 2 * recall * precision / (recall + precision), 0.0)
    present = (support + predicted) > 0
    names = class_names or [str(i) for i in range(cm.shape[0])]
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": [{"class": names[i], "recall": float(recall[i]), "precision": float(precision[i]),
                       "f1": float(f1[i]), "support": int(support[i])} for i in range(cm.shape[0])],
    }


def confusion_figure(confusion: np.ndarray, class_names: list[str] | None = None) -> Figure:
    """Row-normalised confusion matrix (each row: where that true class went), counts written when small."""
    cm = np.asarray(confusion, dtype=np.float64)
    n = cm.shape[0]
    names = class_names or [str(i) for i in range(n)]
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(4 + 0.45 * n, 24)
    fig = Figure(figsize=(size, size * 0.85), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {acc:.3f}, n={int(cm.sum())})")
    fig.tight_layout()
    return fig


def recall_figure(report: dict) -> Figure:
    per = report["per_class"]
    fig = Figure(figsize=(max(5, 0.5 * len(per) + 2), 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.bar(range(len(per)), [p["recall"] for p in per], color="tab:blue")
    ax.set_xticks(range(len(per)), [f"{p['class']}\n(n={p['support']})" for p in per], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.set_title(f"per-class recall (macro-F1 {report['macro_f1']:.3f})")
    fig.tight_layout()
    return fig


def write_report(out_dir: str | Path, report: dict, class_names: list[str] | None = None
                 ) -> dict[str, tuple[Path, np.ndarray]]:
    """classification_report.json, per_class_recall.csv and the confusion-matrix and per-class-recall pictures
    in `out_dir` (`report`: `summarize`'s dict plus "confusion"). Returns {logger key: (PNG path, RGB picture)}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "classification_report.json", report)
    lines = ["class,recall,precision,f1,support"] + [
        f"{json.dumps(p['class'])},{p['recall']:.4f},{p['precision']:.4f},{p['f1']:.4f},{p['support']}"
        for p in report["per_class"]]
    atomic_write_text(out_dir / "per_class_recall.csv", "\n".join(lines) + "\n")
    figures = {"test/confusion_matrix": confusion_figure(np.asarray(report["confusion"]), class_names),
               "test/per_class_recall": recall_figure(report)}
    pictures = {}
    for name, fig in figures.items():
        rgb = figure_rgb(fig)
        pictures[name] = (save_png(rgb, out_dir / f"{name.split('/')[-1]}.png"), rgb)
    return pictures
