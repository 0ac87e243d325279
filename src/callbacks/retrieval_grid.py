"""Top-k retrieval grid picture: each row a query then its top-k gallery hits (green correct, red wrong)."""

from __future__ import annotations

import cv2
import numpy as np

from src.data.images import read_rgb


def _thumb(path: str, size: int, border: tuple[int, int, int] | None) -> np.ndarray:
    try:
        img = read_rgb(path)
    except OSError:
        img = np.zeros((size, size, 3), np.uint8)
    h, w = img.shape[:2]
    s = size / max(h, w)
    img = cv2.resize(img, (max(1, int(w * s)), max(1, int(h * s))))
    canvas = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - img.shape[0]) // 2, (size - img.shape[1]) // 2
    canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
    if border is not None:
        cv2.rectangle(canvas, (0, 0), (size - 1, size - 1), border, 4)
    return canvas


def topk_grid(query_paths: list[str], query_labels: np.ndarray, gallery_paths: list[str], gallery_labels: np.ndarray,
              topk_indices: np.ndarray, size: int = 96) -> np.ndarray:
    """RGB uint8 grid with one row per query."""
    rows = []
    for q, lbl, hits in zip(query_paths, query_labels, topk_indices):
        tiles = [_thumb(q, size, (60, 60, 220))]
        for j in hits:
            if j < 0:
                tiles.append(np.full((size, size, 3), 255, np.uint8))
                continue
            ok = gallery_labels[j] == lbl
            tiles.append(_thumb(gallery_paths[j], size, (30, 180, 30) if ok else (220, 30, 30)))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)
