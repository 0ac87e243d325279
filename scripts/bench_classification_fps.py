"""Inference throughput of classifiers on this CPU: eager vs BN-fused vs ONNX Runtime (vs torch.compile).

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
    .venv/bin/python scripts/bench_classification_fps.py --models mobilenetv3_small_100 --image-size 224 \
        --batch-sizes 1 32 [--compile] [--json out.json]

Models: timm names (`--models`, random weights), the net of an experiment's config (`--experiments
cnn_fashion_mnist lite0_style`, with `--overrides` applied to each; its `data.image_size` unless
`--image-size` is given) or the net of a trained checkpoint (`--ckpts run/checkpoints/epoch005.ckpt`).

Also reports each model's FLOPs (torch.utils.flop_counter: one multiply-add = 2 FLOPs) and the machine's
measured fp32 matmul GFLOP/s, so img/s can be read as a fraction of what the CPU does on a plain GEMM.
Random weights (speed does not depend on them); BN statistics randomised so fusion does real work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from src.inference.onnx import OrtModel, export_onnx  # noqa: E402
from src.nn.fuse import fuse_conv_bn  # noqa: E402


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def model_flops(model: torch.nn.Module, size: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def throughput(fn, batch: np.ndarray | torch.Tensor, min_seconds: float, repeats: int = 3) -> float:
    """Images per second: best of `repeats` timed windows, each of at least `min_seconds` (best-of suppresses
    the noise of other processes on a shared machine; all variants are measured the same way)."""
    n = batch.shape[0]
    for _ in range(3):
        fn(batch)
    rates = []
    for _ in range(repeats):
        iters, start = 0, time.perf_counter()
        while True:
            fn(batch)
            iters += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and iters >= 3:
                break
        rates.append(iters * n / elapsed)
    return max(rates)


def timm_net(name: str, num_classes: int) -> torch.nn.Module:
    """Random weights with BN statistics randomised, so fusion does real work."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    return model


def experiment_net(experiment: str, overrides: list[str]) -> tuple[torch.nn.Module, int]:
    """(`model.net` of `experiment=<name>` composed with `overrides`, its `data.image_size`). Packaged weights
    load offline (Lite0); the speed does not depend on them."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from src.utils import resolvers  # noqa: F401  (${project_root:} in paths)

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
    if cfg.data.get("num_classes") is None:
        raise ValueError(f"experiment={experiment}: data.num_classes is null (read from data at training); "
                         "pass --overrides data.num_classes=<n>")
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
    torch.manual_seed(0)
    return instantiate(cfg.model.net), int(cfg.data.image_size)


def checkpoint_net(path: str) -> tuple[torch.nn.Module, int]:
    """(the trained net of a checkpoint written by src.train, the image size it was trained at)."""
    from src.utils.checkpoint import load_system

    system, cfg = load_system(path)
    return system.net, int(cfg.data.image_size)


def bench_model(name: str, model: torch.nn.Module, size: int, batch_sizes: list[int], min_seconds: float,
                compile_: bool) -> dict:
    model.eval()
    fused, pairs = fuse_conv_bn(model, torch.randn(1, 3, size, size))
    row = {"model": name, "net": type(model).__name__, "image_size": size, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "gflops": model_flops(model, size) / 1e9, "bn_folded": len(pairs), "fps": {}}
    variants = {"eager": model, "fused": fused}
    with tempfile.TemporaryDirectory() as tmp:
        ort = OrtModel(export_onnx(fused, Path(tmp) / "m.onnx", size), threads=torch.get_num_threads())
        if compile_:
            t = time.perf_counter()
            compiled = torch.compile(fused)
            with torch.no_grad():
                compiled(torch.randn(1, 3, size, size))
            row["compile_seconds"] = time.perf_counter() - t
            variants["fused+compile"] = compiled
        for bs in batch_sizes:
            x = torch.randn(bs, 3, size, size)
            with torch.no_grad():
                for label, m in variants.items():
                    row["fps"][f"{label}@{bs}"] = throughput(m, x, min_seconds)
            row["fps"][f"onnxruntime@{bs}"] = throughput(ort, x.numpy(), min_seconds)
    return row


def markdown(rows: list[dict], machine: dict) -> str:
    keys = sorted({k for r in rows for k in r["fps"]}, key=lambda k: (int(k.split("@")[1]), k))
    lines = [f"machine: {machine['threads']} torch threads, fp32 matmul {machine['matmul_gflops']:.0f} GFLOP/s, "
             f"load average {machine['load_average']}", "",
             "| model | px | params (M) | GFLOPs | " + " | ".join(f"{k} img/s" for k in keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image_size']} | {r['params_M']:.2f} | {r['gflops']:.3f} | "
                     + " | ".join(f"{r['fps'].get(k, float('nan')):.1f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=[], help="timm model names (random weights)")
    ap.add_argument("--experiments", nargs="*", default=[], help="experiment names: their config's model.net")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every --experiments entry")
    ap.add_argument("--ckpts", nargs="*", default=[], help="checkpoints written by src.train: their trained net")
    ap.add_argument("--image-size", type=int, help="default: the experiment's/checkpoint's data.image_size, "
                    "else 224")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--num-classes", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (30-60 s to compile on CPU)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {"threads": torch.get_num_threads(), "matmul_gflops": matmul_gflops(),
               "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    if not (args.models or args.experiments or args.ckpts):
        ap.error("give --models, --experiments or --ckpts")
    nets = [(m, timm_net(m, args.num_classes), args.image_size or 224) for m in args.models]
    nets += [(e, *experiment_net(e, args.overrides)) for e in args.experiments]
    nets += [(c, *checkpoint_net(c)) for c in args.ckpts]
    rows = [bench_model(name, net, args.image_size or size, args.batch_sizes, args.min_seconds, args.compile)
            for name, net, size in nets]
    print(markdown(rows, machine))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
