"""ONNX export (TorchScript-based exporter: `dynamo=False` needs no onnxscript) and ONNX Runtime inference."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.utils.io import atomic_write_bytes


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: int | tuple[int, int], channels: int = 3,
                opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Export an eval-mode image classifier (images [B, C, H, W] -> logits [B, K]); written atomically."""
    if model.training:
        raise ValueError("export an eval-mode model (dropout/BN in training mode would be baked in)")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    dummy = torch.zeros(1, channels, h, w)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (the dynamo one needs onnxscript): not news each time.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["images"],
            output_names=["logits"], do_constant_folding=True,
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
        )
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


class OrtClassifier:
    """An ONNX Runtime session with the same call contract as the PyTorch model: float32 [B,C,H,W] -> logits."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]
