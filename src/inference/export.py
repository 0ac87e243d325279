"""Checkpoint -> ONNX file + its inference settings next to it, checked against eager with ONNX Runtime.

Embedders and classifiers are exported with BatchNorm folded into the convolutions (src.nn.fuse) and a
dynamic batch; detectors take one image of any size. The settings file carries the eager network's
fingerprint, so galleries built with the checkpoint are searched with the ONNX file and vice versa.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from src.inference.checkpoint import load_network
from src.inference.detector import detector_input
from src.inference.embedder import compute_fingerprint
from src.inference.onnx import OrtDetectorModel, OrtModel, export_detector_onnx, export_onnx
from src.inference.settings import write_sidecar

__all__ = ["export_checkpoint"]


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, *, fuse: bool = True,
                      image_size: int | None = None, example_image: np.ndarray | None = None) -> dict:
    """Write ``out`` (.onnx) and ``<out stem>.inference.json``; returns what was written and the largest
    difference from eager on a random input (embedder / classifier) or the matched boxes (detector).

    Detectors are traced on ``example_image`` (HxWx3 uint8 RGB, resized as served) or else on random pixels,
    and the example must give boxes: torchvision's Faster R-CNN traces its no-proposal path on an image where
    it finds nothing, and that file fails on every real photo (a trained counter detector on random pixels)."""
    net, settings = load_network(ckpt, None)
    torch.manual_seed(0)
    if settings.kind == "detector":
        size = image_size or settings.eval_size or 320
        if example_image is None:
            example = torch.rand(3, size, size * 4 // 3)
        else:
            example, _ = detector_input(example_image, size, settings.max_size)  # as src.inference serves it
        with torch.inference_mode():
            ref = net([example])[0]
        if not len(ref["boxes"]):
            raise ValueError(f"{ckpt}: the detector finds no box on the export example "
                             f"({'random pixels' if example_image is None else 'the example image'}); traced so, "
                             "the ONNX file would fail on real photos. Export with an example photo it finds "
                             "products in (scripts/export_onnx.py --example-image).")
        path = export_detector_onnx(net, out, example)
        got = OrtDetectorModel(path)([example])[0]
        report = {"eager_boxes": int(len(ref["boxes"])), "onnx_boxes": int(len(got["boxes"])),
                  "max_box_diff": _box_diff_within_ties(got, ref),
                  "max_score_diff": _max_diff(got["scores"], ref["scores"])}
    else:
        settings = settings.with_fingerprint(compute_fingerprint(net, settings.transform_identity()))
        probe = settings.preprocess()(np.zeros((image_size or 64, image_size or 64, 3), np.uint8))
        example = torch.randn(2, *probe.shape)
        with torch.inference_mode():
            ref = net(example).numpy()
        if fuse:
            from src.nn.fuse import fuse_conv_bn

            net, _ = fuse_conv_bn(net, example[:1])
        name = "embeddings" if settings.kind == "embedder" else "logits"
        path = export_onnx(net, out, tuple(probe.shape[1:]), channels=probe.shape[0], output_name=name)
        report = {"max_abs_diff": float(np.abs(OrtModel(path)(example) - ref).max())}
    sidecar = write_sidecar(path, settings)
    return {"onnx": str(path), "settings": str(sidecar), "kind": settings.kind, **report}


def _box_diff_within_ties(got: dict, ref: dict, score_tol: float = 1e-5) -> float | None:
    """Largest distance (px) from an ONNX box to the nearest eager box of its label with a tying score. Boxes
    whose scores tie within float noise (common on the random probe image) may come back in either order, so
    comparing by rank reports a swap as an export error."""
    if got["boxes"].shape != ref["boxes"].shape or not len(got["boxes"]):
        return None
    worst = 0.0
    for box, score, label in zip(got["boxes"].float(), got["scores"].float(), got["labels"]):
        tie = ((ref["scores"].float() - score).abs() <= score_tol) & (ref["labels"] == label)
        if not bool(tie.any()):
            return float("inf")
        worst = max(worst, float((ref["boxes"][tie].float() - box).abs().amax(1).min()))
    return worst


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float | None:
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape and a.numel() else None
