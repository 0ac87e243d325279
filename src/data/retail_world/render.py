"""Draw a SKU's package as an RGBA image (numpy, OpenCV): silhouette, palette, pattern and printed name."""

from __future__ import annotations

import cv2
import numpy as np

from src.data.retail_world.catalogue import SKU


def _silhouette_mask(shape: str, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if shape == "box":
        m[:] = 255
    elif shape == "bottle":
        neck_w = w // 3
        cv2.rectangle(m, ((w - neck_w) // 2, 0), ((w + neck_w) // 2, h // 4), 255, -1)
        cv2.ellipse(m, (w // 2, h // 4), (w // 2 - 1, h // 10), 0, 0, 360, 255, -1)
        cv2.rectangle(m, (0, h // 4), (w - 1, h - 1), 255, -1)
    elif shape == "can":
        cv2.rectangle(m, (0, h // 12), (w - 1, h - h // 12), 255, -1)
        cv2.ellipse(m, (w // 2, h // 12), (w // 2 - 1, h // 12), 0, 0, 360, 255, -1)
        cv2.ellipse(m, (w // 2, h - h // 12 - 1), (w // 2 - 1, h // 12), 0, 0, 360, 255, -1)
    elif shape == "bag":
        pts = np.array([[w // 10, 0], [w - w // 10, 0], [w - 1, h - 1], [0, h - 1]], np.int32)
        cv2.fillPoly(m, [pts], 255)
    elif shape == "jar":
        cv2.rectangle(m, (w // 8, 0), (w - w // 8, h // 6), 255, -1)
        cv2.rectangle(m, (0, h // 6), (w - 1, h - 1), 255, -1)
    elif shape == "tube":
        pts = np.array([[w // 4, 0], [w - w // 4, 0], [w - 1, h - 1], [0, h - 1]], np.int32)
        cv2.fillPoly(m, [pts], 255)
    else:
        raise ValueError(f"unknown silhouette {shape!r}")
    return m


def _pattern(canvas: np.ndarray, pattern: str, colour: tuple[int, int, int], family_id: int) -> None:
    h, w = canvas.shape[:2]
    step = max(4, w // (4 + family_id % 3))
    if pattern == "stripes":
        for y in range(0, h, step * 2):
            canvas[y : y + step] = colour
    elif pattern == "dots":
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                cv2.circle(canvas, (x, y), max(1, step // 3), colour, -1)
    elif pattern == "checker":
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2 == 0:
                    canvas[y : y + step, x : x + step] = colour
    elif pattern == "waves":
        xs = np.arange(w)
        for y0 in range(0, h, step * 2):
            ys = (y0 + (step / 2) * np.sin(xs / max(w, 1) * 2 * np.pi * 2)).astype(np.int32)
            pts = np.stack([xs, ys], 1).reshape(-1, 1, 2)
            cv2.polylines(canvas, [pts], False, colour, max(1, step // 3))
    elif pattern == "diagonal":
        for k in range(-h, w, step * 2):
            cv2.line(canvas, (k, 0), (k + h, h), colour, max(1, step // 2))
    elif pattern == "band":
        canvas[h // 3 : h // 3 + h // 5] = colour
    elif pattern != "plain":
        raise ValueError(f"unknown pattern {pattern!r}")


def render_package(sku: SKU, width: int) -> np.ndarray:
    """Front view of the package, RGBA uint8, `width` pixels wide and `width * aspect` tall."""
    w = int(width)
    h = int(round(width * sku.aspect))
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = sku.base_rgb
    _pattern(rgb, sku.pattern, sku.accent_rgb, sku.family_id)
    # Label panel with the printed name: where look-alike variants differ by text.
    panel_top, panel_bot = int(h * 0.55), int(h * 0.8)
    cv2.rectangle(rgb, (w // 10, panel_top), (w - w // 10, panel_bot), sku.base_rgb, -1)
    cv2.rectangle(rgb, (w // 10, panel_top), (w - w // 10, panel_bot), sku.accent_rgb, max(1, w // 40))
    text = sku.label_text
    scale = 1.0
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    scale = min((w * 0.75) / max(tw, 1), (panel_bot - panel_top) * 0.6 / max(th, 1))
    thick = max(1, int(round(scale * 2)))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    org = ((w - tw) // 2, (panel_top + panel_bot + th) // 2)
    cv2.putText(rgb, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, sku.text_rgb, thick, cv2.LINE_AA)
    # Accent logo disc near the top: a second small region where variants differ by colour.
    cv2.circle(rgb, (w // 2, int(h * 0.35)), max(2, w // 6), sku.accent_rgb, -1)
    cv2.circle(rgb, (w // 2, int(h * 0.35)), max(2, w // 6), sku.text_rgb, max(1, w // 48))
    mask = _silhouette_mask(sku.silhouette, h, w)
    # Simple cylindrical shading so cans and bottles do not look flat.
    if sku.silhouette in ("can", "bottle", "jar"):
        shade = 0.75 + 0.25 * np.sin(np.linspace(0.15, np.pi - 0.15, w))
        rgb = np.clip(rgb.astype(np.float32) * shade[None, :, None], 0, 255).astype(np.uint8)
    return np.dstack([rgb, mask])
