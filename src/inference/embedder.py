"""Crops -> L2-normalised embeddings, with the exact eval preprocessing the model was trained with.

`load_embedder(path)` takes a src.train checkpoint (the network and the `inference:` settings stored in it) or
an exported ONNX file (run by ONNX Runtime, settings from the file next to it), so a gallery is always queried
with the preprocessing it was built with. `fingerprint` = sha256 of the network's weights and the eval
transform: GalleryIndex refuses searches whose fingerprint differs (another model, or the same model with
another resize). An ONNX export carries its checkpoint's fingerprint: either can search the other's gallery.
Gallery images may be enrolled through views (src/inference/gallery_views.py, ``inference.gallery_views``);
the views are part of the fingerprint, so a gallery never mixes policies.
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
from src.inference.settings import InferenceSettings, read_sidecar
from src.inference.gallery_views import check_views, render_views

__all__ = ["Embedder", "compute_fingerprint", "load_embedder"]

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


class Embedder:
    """Embeds lists of RGB uint8 crops in batches.

    Args:
        net: maps a float batch ``[B, 3, H, W]`` to L2-normalised embeddings ``[B, D]``: an nn.Module
            (EmbeddingNet) run by torch, or any callable on float32 arrays (src.inference.onnx.OrtModel).
        preprocess: one crop (RGB uint8 HxWx3) -> CHW float tensor.
        fingerprint: identifies net + preprocessing (see :func:`compute_fingerprint`).
        dim: embedding size; read from ``net.embedding_dim`` when omitted, else found on the first call.
        device: where the net runs.
        batch_size: crops per forward pass.
        gallery_views: names of src.inference.gallery_views.GALLERY_VIEWS; :meth:`embed_gallery` enrols an
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
        self.net = net.to(self.device).eval() if isinstance(net, nn.Module) else net
        self.preprocess = preprocess
        self.gallery_views = check_views(gallery_views)
        if self.gallery_views:
            views = json.dumps(list(self.gallery_views))
            fingerprint = hashlib.sha256(f"{fingerprint}|gallery_views|{views}".encode()).hexdigest()
        self.fingerprint = fingerprint
        self.batch_size = int(batch_size)
        self._dim = dim if dim is not None else getattr(net, "embedding_dim", None)

    @property
    def dim(self) -> int:
        if self._dim is None:  # an arbitrary net: find out once with a dummy crop
            self._dim = int(self.embed([np.zeros((8, 8, 3), np.uint8)]).shape[1])
        return int(self._dim)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, nn.Module):
            return self.net(batch.to(self.device, torch.float32)).float()
        return torch.from_numpy(np.asarray(self.net(batch.numpy().astype(np.float32)), np.float32))

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
                emb = self._run(torch.stack([tensors[i] for i in chunk]))
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


def load_embedder(path: str | os.PathLike, *, device: str = "cpu", batch_size: int = 64,
                  gallery_views: Sequence[str] | None = None, threads: int | None = None) -> Embedder:
    """An Embedder from a src.train checkpoint (``.ckpt``) or an exported ONNX file (``.onnx`` + its
    ``.inference.json``). ``gallery_views`` None: the model's ``inference.gallery_views``; ``threads``: ONNX
    Runtime's intra-op threads (None: its default)."""
    if Path(path).suffix == ".onnx":
        from src.inference.onnx import OrtModel

        settings = read_sidecar(path)
        _expect(settings, path)
        if not settings.fingerprint:
            raise ValueError(f"{path}: its inference settings hold no fingerprint (re-export it)")
        net, fingerprint = OrtModel(path, threads=threads), settings.fingerprint
    else:
        from src.inference.checkpoint import load_network

        net, settings = load_network(path, "embedder")
        fingerprint = compute_fingerprint(net, settings.transform_identity())
    views = settings.gallery_views if gallery_views is None else gallery_views
    return Embedder(net, settings.preprocess(), fingerprint, dim=getattr(net, "embedding_dim", None), device=device,
                    batch_size=batch_size, gallery_views=list(views))


def _expect(settings: InferenceSettings, path) -> None:
    if settings.kind != "embedder":
        raise ValueError(f"{path} holds a {settings.kind}, not an embedder")
