"""Test helpers: an identity-like embedder (downsampled pixels), clean generated counter scenes, a tiny
EmbeddingSystem checkpoint written without training."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from src.data.retail_world import photometric as ph
from src.data.retail_world.catalogue import SKU, make_catalogue
from src.data.retail_world.render import render_package
from src.inference.embedder import Embedder
from src.recognition.gallery import ProductImage

CATALOGUE = make_catalogue(8, 2, 0)  # the tests' tiny world: 8 families x 2 look-alike variants


class PixelNet(nn.Module):
    """Embedding = the downsampled pixels, centred per image and channel (a global lighting cast cancels),
    L2-normalised: identity-like, so a clean crop matches its own product's studio shot."""

    embedding_dim = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        return nn.functional.normalize(x.flatten(1), dim=1)


def pixel_embedder(size: int = 16) -> Embedder:
    def preprocess(img: np.ndarray) -> torch.Tensor:
        small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small.transpose(2, 0, 1).copy()).float() / 255

    return Embedder(PixelNet(), preprocess, f"pixels-{size}", dim=3 * size * size)


PACKAGE_WIDTH = 57  # studio shots and counter photos render packages at one width: identical artwork


def studio_shot(sku: SKU, margin: int = 0) -> np.ndarray:
    """The package upright on a light studio background, cut at its edges (as catalogue cut-outs are)."""
    pkg = render_package(sku, PACKAGE_WIDTH)
    h, w = pkg.shape[:2]
    canvas = np.full((h + 2 * margin, w + 2 * margin, 3), 245, np.uint8)
    ph.paste_rgba(canvas, pkg, margin, margin)
    return canvas


def studio_entry(sku: SKU, view: int = 0) -> ProductImage:
    img = studio_shot(sku)
    return ProductImage(str(sku.sku_id), f"studio/{sku.sku_id}_{view}.jpg", sku.name, sku.category, sku.price,
                        image=img)


def counter_photo(skus: list[SKU], seed: int = 0, size: tuple[int, int] = (240, 320)):
    """Products standing upright side by side on a light counter (no warp, no overlap) -> (RGB image,
    boxes xyxy [n, 4], sku ids). Clean crops: the identity-like embedder recognises them."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w, 3), 238, np.uint8)
    img = (img.astype(np.int16) + rng.integers(-4, 5, size=(h, w, 1))).clip(0, 255).astype(np.uint8)
    slot = w // len(skus)
    boxes = []
    for j, sku in enumerate(skus):
        pkg = render_package(sku, min(PACKAGE_WIDTH, int(slot * 0.8)))
        if pkg.shape[0] > h - 10:
            pkg = cv2.resize(pkg, (max(2, pkg.shape[1] * (h - 10) // pkg.shape[0]), h - 10))
        x = j * slot + int(rng.integers(2, max(3, slot - pkg.shape[1] - 2)))
        y = int(rng.integers(5, max(6, h - pkg.shape[0] - 5)))
        ph.paste_rgba(img, pkg, x, y)
        boxes.append([x, y, x + pkg.shape[1], y + pkg.shape[0]])
    return img, np.asarray(boxes, np.float32), [s.sku_id for s in skus]


def write_tiny_checkpoint(path: Path, tmp_dir: Path, image_size: int = 32, embedding_dim: int = 32,
                          gallery_views: list[str] | None = None) -> Path:
    """An EmbeddingSystem checkpoint with the keys src.train writes (state_dict, resolved hydra_config and the
    inference settings), random weights, built from conf/ (demo_retrieval with a 0.1M-parameter timm test
    backbone)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from src.inference.checkpoint import CONFIG_KEY, settings_from_config
    from src.inference.settings import CHECKPOINT_KEY
    from tests.conftest import compose_cfg

    cfg = compose_cfg("train", ["experiment=demo_retrieval", "trainer=cpu", "logger=csv",
                                "model.net.backbone.model_name=test_efficientnet",
                                f"model.net.embedding_dim={embedding_dim}", f"data.image_size={image_size}"],
                      tmp_dir / "run", tmp_dir / "data")
    torch.manual_seed(0)
    system = instantiate(cfg.model)
    config = {"model": OmegaConf.to_container(cfg.model, resolve=True),
              "data": {"image_size": image_size,
                       "eval_transform": OmegaConf.to_container(cfg.data.eval_transform, resolve=True)}}
    if gallery_views is not None:
        config["inference"] = {"gallery_views": list(gallery_views)}
    settings = settings_from_config(config, "embedder").to_dict()
    torch.save({"state_dict": system.state_dict(), CONFIG_KEY: config, CHECKPOINT_KEY: settings}, path)
    return path


class BlobDetector:
    """A classical detector for the clean generated photos: products are the connected regions that differ
    from the light background. Good enough to drive the service end to end without a trained model."""

    def __init__(self, background: int = 238, tolerance: int = 25, min_area: int = 150) -> None:
        self.background, self.tolerance, self.min_area = background, tolerance, min_area

    def detect(self, image: np.ndarray):
        from src.inference.detector import Detections

        diff = np.abs(image.astype(np.int16) - self.background).max(axis=2) > self.tolerance
        mask = cv2.morphologyEx(diff.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        boxes = [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:] if area >= self.min_area]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return Detections(boxes, np.ones(len(boxes), np.float32), np.ones(len(boxes), np.int64))
