"""Crops -> L2-normalised embeddings, with the exact eval preprocessing the model was trained with.

`Embedder.from_checkpoint(ckpt)` rebuilds the network and the eval transform from the resolved Hydra config
that src.train stores in every checkpoint, so a gallery is always queried with the same preprocessing it was
built with. `fingerprint` = sha256 of the network's weights and the preprocessing config: GalleryIndex
refuses searches whose fingerprint differs (another model, or the same model with another resize).
Gallery images may be enrolled through views (src/recognition/gallery_views.py, the checkpoint config's
``recognition.gallery_views``); the views are part of the fingerprint, so a gallery never mixes policies.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from src.data.images import check_rgb_image
from src.recognition.gallery_views import check_views, render_views

__all__ = ["Embedder", "albumentations_preprocess", "compute_fingerprint"]

Preprocess = Callable[[np.ndarray], torch.Tensor]


def compute_fingerprint(net: nn.Module, preprocess_config: Mapping[str, Any] | str) -> str:
    """sha256 over every state_dict tensor (name, dtype, shape, raw bytes, in name order) and the
    preprocessing config as canonical JSON. Same weights + same preprocessing -> same fingerprint."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes for any dtype, bf16 included
    cfg = preprocess_config if isinstance(preprocess_config, str) else json.dumps(preprocess_config, sort_keys=True)
    h.update(b"|preprocess|" + cfg.encode())
    return h.hexdigest()


def albumentations_preprocess(transform: Callable) -> Preprocess:
    """Adapt an albumentations Compose ending in ToTensorV2 to `crop -> CHW float tensor`."""

    def run(image: np.ndarray) -> torch.Tensor:
        return transform(image=image)["image"]

    return run


class Embedder:
    """Embeds lists of RGB uint8 crops in batches.

    Args:
        net: maps a float batch ``[B, 3, H, W]`` to L2-normalised embeddings ``[B, D]`` (EmbeddingNet does).
        preprocess: one crop (RGB uint8 HxWx3) -> CHW float tensor.
        fingerprint: identifies net + preprocessing (see :func:`compute_fingerprint`).
        dim: embedding size; read from ``net.embedding_dim`` when omitted, else found on the first call.
        device: where the net runs.
        batch_size: crops per forward pass.
        gallery_views: names of src.recognition.gallery_views.GALLERY_VIEWS; :meth:`embed_gallery` enrols an
            image as the mean embedding of the image and these views. Non-empty views extend the fingerprint.
    """

    def __init__(self, net: nn.Module, preprocess: Preprocess, fingerprint: str, *, dim: int | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 gallery_views: Sequence[str] = ()) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not fingerprint:
            raise ValueError("fingerprint must be a non-empty string")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.preprocess = preprocess
        self.gallery_views = check_views(gallery_views)
        if self.gallery_views:
            views = json.dumps(list(self.gallery_views))
            fingerprint = hashlib.sha256(f"{fingerprint}|gallery_views|{views}".encode()).hexdigest()
        self.fingerprint = fingerprint
        self.batch_size = int(batch_size)
        self._dim = dim if dim is not None else getattr(net, "embedding_dim", None)

    @classmethod
    def from_checkpoint(cls, ckpt: str | os.PathLike, device: str = "cpu", batch_size: int = 64,
                        gallery_views: Sequence[str] | None = None) -> "Embedder":
        """An EmbeddingSystem checkpoint written by src.train (its config holds data.eval_transform).
        ``gallery_views`` None: the config's ``recognition.gallery_views`` (none if absent)."""
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from src.utils.checkpoint import load_system

        system, cfg = load_system(Path(ckpt))
        net = getattr(system, "net", None)
        if net is None:
            raise ValueError(f"{ckpt}: {type(system).__name__} has no `net` embedding network "
                             "(expected an EmbeddingSystem checkpoint)")
        transform_cfg = OmegaConf.select(cfg, "data.eval_transform")
        if transform_cfg is None:
            raise KeyError(f"{ckpt}: its config has no data.eval_transform; cannot rebuild the preprocessing")
        transform_dict = OmegaConf.to_container(transform_cfg, resolve=True)
        preprocess = albumentations_preprocess(instantiate(transform_cfg))
        if gallery_views is None:
            gallery_views = OmegaConf.select(cfg, "recognition.gallery_views", default=None) or ()
        return cls(net, preprocess, compute_fingerprint(net, transform_dict), device=device, batch_size=batch_size,
                   gallery_views=list(gallery_views))

    @property
    def dim(self) -> int:
        if self._dim is None:  # an arbitrary net: find out once with a dummy crop
            self._dim = int(self.embed([np.zeros((8, 8, 3), np.uint8)]).shape[1])
        return int(self._dim)

    @torch.inference_mode()
    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``[n, dim]`` float32 L2-normalised embeddings, one per crop, in order."""
        crops = [check_rgb_image(c, f"crop {i}") for i, c in enumerate(crops)]
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        tensors = [self.preprocess(c) for c in crops]
        # Transforms that keep the aspect ratio may give different sizes: batch same-shape tensors together.
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        out: np.ndarray | None = None
        for positions in groups.values():
            for start in range(0, len(positions), self.batch_size):
                chunk = positions[start:start + self.batch_size]
                batch = torch.stack([tensors[i] for i in chunk]).to(self.device, torch.float32)
                emb = self.net(batch).float()
                # Re-normalise: the index rejects non-unit vectors, and fp error or a net without a final
                # normalisation would otherwise fail there with a less obvious message.
                emb = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
                if out is None:
                    out = np.empty((len(crops), emb.shape[1]), np.float32)
                out[chunk] = emb
        if self._dim is None:
            self._dim = out.shape[1]
        return out

    def embed_gallery(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings to enrol product images with: the L2-normalised mean over each image and its
        ``gallery_views`` (just :meth:`embed` without views)."""
        if not self.gallery_views or len(images) == 0:
            return self.embed(images)
        images = [check_rgb_image(c, f"crop {i}") for i, c in enumerate(images)]
        n_views = 1 + len(self.gallery_views)
        flat = self.embed([v for im in images for v in render_views(im, self.gallery_views)])
        mean = flat.reshape(len(images), n_views, -1).mean(axis=1)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)
