"""ONNX export (TorchScript-based exporter: `dynamo=False` needs no onnxscript) and ONNX Runtime sessions with
the same call contracts as the eager models, so src.inference serves either."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from src.utils.io import atomic_write_bytes

__all__ = ["OrtDetectorModel", "OrtModel", "export_detector_onnx", "export_onnx"]

DETECTION_OUTPUTS = ("boxes", "labels", "scores")  # the order torchvision's eval output flattens to


def _export(model: nn.Module, args: tuple, path: str | os.PathLike, *, input_names: list[str],
            output_names: list[str], dynamic_axes: dict | None, opset: int) -> Path:
    if model.training:
        raise ValueError("export an eval-mode model (dropout/BN in training mode would be baked in)")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (the dynamo one needs onnxscript): not news each time.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        # Tracing torchvision detectors warns about every shape-derived constant: inherent, checked vs eager.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, do_constant_folding=True, dynamic_axes=dynamic_axes)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: int | tuple[int, int], channels: int = 3,
                opset: int = 17, dynamic_batch: bool = True, output_name: str = "logits") -> Path:
    """An eval-mode image network (images [B, C, H, W] -> [B, K]: logits or embeddings); written atomically."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    axes = {"images": {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    return _export(model, (torch.zeros(1, channels, h, w),), path, input_names=["images"],
                   output_names=[output_name], dynamic_axes=axes, opset=opset)


def export_detector_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, opset: int = 17) -> Path:
    """A torchvision-contract detector (one CHW float image -> boxes, labels, scores), any image size."""
    axes = {"image": {1: "height", 2: "width"}, **{name: {0: "n"} for name in DETECTION_OUTPUTS}}
    return _export(model, ([example],), path, input_names=["image"], output_names=list(DETECTION_OUTPUTS),
                   dynamic_axes=axes, opset=opset)


class OrtModel:
    """An ONNX Runtime session called like the PyTorch network: float32 arrays in, its first output out."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.run(images)[0]


class OrtDetectorModel(OrtModel):
    """An exported detector with torchvision's eval contract: list of CHW float images -> [{boxes, scores,
    labels}] as tensors (one session run per image: the export takes one image of any size)."""

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            result = dict(zip(DETECTION_OUTPUTS, self.run(image)))
            out.append({k: torch.from_numpy(np.asarray(v)) for k, v in result.items()})
        return out
