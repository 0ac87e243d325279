"""In-the-wild photo effects shared by product views and counter scenes: backgrounds, lighting, blur, JPEG."""

from __future__ import annotations

import cv2
import numpy as np


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural clutter texture: gradient + blurred noise + a few random shapes."""
    c0 = rng.integers(40, 220, size=3)
    c1 = rng.integers(40, 220, size=3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = (c0 * (1 - t) + c1 * t).repeat(h, axis=0)
    noise = cv2.GaussianBlur(rng.normal(0, 25, size=(h, w, 3)).astype(np.float32), (0, 0), 3)
    img = img + noise
    for _ in range(int(rng.integers(0, 4))):
        colour = rng.integers(0, 256, size=3).tolist()
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.circle(img, (x, y), int(rng.integers(3, max(4, w // 4))), colour, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def counter_surface(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Wood- or laminate-like checkout counter."""
    base = rng.integers(90, 200, size=3).astype(np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    grain = 12 * np.sin(ys / rng.uniform(3, 9) + 3 * np.sin(xs / rng.uniform(30, 80)))
    img = base[None, None, :] + grain[..., None] + rng.normal(0, 4, size=(h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def paste_rgba(dst: np.ndarray, src_rgba: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend src onto dst with its top-left corner at (x, y); clipped at the borders."""
    h, w = src_rgba.shape[:2]
    H, W = dst.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    s = src_rgba[y0 - y : y1 - y, x0 - x : x1 - x]
    a = s[..., 3:4].astype(np.float32) / 255.0
    region = dst[y0:y1, x0:x1].astype(np.float32)
    dst[y0:y1, x0:x1] = (s[..., :3] * a + region * (1 - a)).astype(np.uint8)


def warp_rgba(rgba: np.ndarray, rng: np.random.Generator, max_rotation: float, max_perspective: float) -> np.ndarray:
    """Rotate and perspective-warp an RGBA sprite onto a canvas large enough to hold it."""
    h, w = rgba.shape[:2]
    pad = int(0.35 * max(h, w))
    canvas = cv2.copyMakeBorder(rgba, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0, 0))
    H, W = canvas.shape[:2]
    src = np.float32([[pad, pad], [pad + w, pad], [pad + w, pad + h], [pad, pad + h]])
    jitter = rng.uniform(-max_perspective, max_perspective, size=(4, 2)).astype(np.float32) * np.float32([w, h])
    dst = src + jitter
    m = cv2.getPerspectiveTransform(src, dst)
    rot = cv2.getRotationMatrix2D((W / 2, H / 2), float(rng.uniform(-max_rotation, max_rotation)), 1.0)
    m = np.vstack([rot, [0, 0, 1]]) @ m
    return cv2.warpPerspective(canvas, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def alpha_bbox(rgba: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(rgba[..., 3] > 127)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(0.6, 1.35)
    gamma = rng.uniform(0.7, 1.4)
    cast = rng.uniform(0.88, 1.12, size=3)
    out = 255.0 * (img.astype(np.float32) / 255.0) ** gamma * gain * cast
    return np.clip(out, 0, 255).astype(np.uint8)


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(0.0, 1.4)
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.3 else img


def occlude(img: np.ndarray, rng: np.random.Generator, max_fraction: float) -> np.ndarray:
    """Cover part of the product with a hand-like blob or a price sticker."""
    h, w = img.shape[:2]
    if rng.random() > 0.5:
        return img
    out = img.copy()
    frac = rng.uniform(0.05, max_fraction)
    rw, rh = int(w * np.sqrt(frac)), int(h * np.sqrt(frac))
    x, y = int(rng.integers(0, max(1, w - rw))), int(rng.integers(0, max(1, h - rh)))
    colour = (int(rng.integers(150, 230)), int(rng.integers(110, 180)), int(rng.integers(90, 150)))
    if rng.random() < 0.5:
        cv2.ellipse(out, (x + rw // 2, y + rh // 2), (max(1, rw // 2), max(1, rh // 2)), 0, 0, 360, colour, -1)
    else:
        cv2.rectangle(out, (x, y), (x + rw, y + rh), (250, 250, 240), -1)
    return out


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def jpeg_decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    return jpeg_decode(jpeg_bytes(rgb, quality))
