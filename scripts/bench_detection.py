"""CPU inference latency of the torchvision Faster R-CNN variants, batch 1: eager PyTorch vs ONNX Runtime.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
    .venv/bin/python scripts/bench_detection.py [--reps 5] [--sizes 320 640] [--models mobilenet r50] [--threads 2]

One 4:3 image per size (shorter side 320 -> 320x427, 640 -> 640x853; the data pipeline resizes, the model does
not: see src/models/detectors/torchvision_models.py), a real retail-world scene upscaled so the RPN sees texture.
Weights are random (no internet here), but the work per image is fixed by the architecture: 1000 RPN proposals
after NMS go through the box head whatever the weights, so latency is representative of trained models.
Median of --reps timed runs after --warmup runs. ONNX: torch.onnx.export(dynamo=False, opset 17), then the ORT
output compared with eager on the same image. Writes experiments/detection_latency/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.models.detectors.torchvision_models import fasterrcnn  # noqa: E402

# name -> (torchvision builder, FasterRCNN kwargs). The box head (two FC layers over 256x7x7 RoI features) runs
# on every RPN proposal: 1000 by default, 150 in torchvision's mobilenet_v3_large_320_fpn preset ("p150").
MODELS = {
    "mobilenet": ("fasterrcnn_mobilenet_v3_large_fpn", {}),
    "mobilenet_p150": ("fasterrcnn_mobilenet_v3_large_fpn", {"rpn_pre_nms_top_n_test": 150,
                                                             "rpn_post_nms_top_n_test": 150}),
    "r50": ("fasterrcnn_resnet50_fpn_v2", {}),
}
ANCHOR_MS = 29.8  # PicoDet main-body detector (PP-ShiTu), ms per image on CPU: the speed to beat
OUT = ROOT / "experiments/detection_latency/README.md"


def scene_image(short_side: int) -> torch.Tensor:
    """A retail-world counter scene (generated on the fly, 320x240) resized to the shorter side, CHW 0..1."""
    from src.data.retail_world.catalogue import make_catalogue
    from src.data.retail_world.scenes import counter_scene

    img, _ = counter_scene(make_catalogue(8, 2, 0), (240, 320), np.random.default_rng(0), 4, 6)
    w = round(320 * short_side / 240)
    img = cv2.resize(img, (w, short_side), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div_(255)


def time_runs(fn, warmup: int, reps: int) -> tuple[float, list[float], float]:
    """(median wall ms, all wall ms, median process CPU ms). CPU time (all threads of this process) is what a run
    costs even when other jobs share the cores; wall time is what a caller waits."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(times), times, statistics.median(cpu)


def match_report(boxes: torch.Tensor, scores: torch.Tensor, ref: dict) -> str:
    """How many ONNX boxes have an eager twin (IoU > 0.99, |score difference| < 1e-3). Random weights give
    near-tied scores, so the order (and which box the 100-box cap keeps) can differ: compare as sets."""
    from torchvision.ops import box_iou

    if len(boxes) == 0 or len(ref["boxes"]) == 0:
        return f"{len(boxes)} vs {len(ref['boxes'])} boxes"
    iou = box_iou(boxes, ref["boxes"])
    close = (iou > 0.99) & ((scores[:, None] - ref["scores"][None, :]).abs() < 1e-3)
    return f"{int(close.any(1).sum())}/{len(boxes)} ONNX boxes match eager ({len(ref['boxes'])} eager boxes)"


def export_onnx(model: torch.nn.Module, image: torch.Tensor, path: Path) -> None:
    torch.onnx.export(model, ([image],), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["boxes", "labels", "scores"],
                      dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"},
                                    "scores": {0: "n"}})


def bench(name: str, size: int, args, tmp: Path) -> dict:
    torch.manual_seed(0)
    builder, kwargs = MODELS[name]
    model = fasterrcnn(builder, num_classes=2, **kwargs).eval()
    image = scene_image(size)
    row = {"model": name, "builder": builder, "kwargs": kwargs, "short_side": size,
           "input": f"{image.shape[1]}x{image.shape[2]}",
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    with torch.inference_mode():
        ref = model([image])[0]
        row["eager_ms"], row["eager_all"], row["eager_cpu_ms"] = time_runs(lambda: model([image]), args.warmup,
                                                                            args.reps)
    row["detections"] = int(len(ref["boxes"]))
    if args.no_onnx:
        row["onnx"] = "skipped"
        return row
    path = tmp / f"{name}_{size}.onnx"
    try:
        t = time.perf_counter()
        export_onnx(model, image, path)
        row["export_s"] = time.perf_counter() - t
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}
        boxes, labels, scores = sess.run(None, feed)
        row["onnx_vs_eager"] = match_report(torch.from_numpy(boxes), torch.from_numpy(scores), ref)
        row["onnx_ms"], row["onnx_all"], row["onnx_cpu_ms"] = time_runs(lambda: sess.run(None, feed), args.warmup,
                                                                         args.reps)
        row["onnx_mb"] = path.stat().st_size / 1e6
        row["onnx"] = "ok"
    except Exception as e:  # report why export or ORT failed, keep benchmarking the rest
        row["onnx"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        traceback.print_exc()
    finally:
        path.unlink(missing_ok=True)
    return row


def render(rows: list[dict], args, command: str, load: tuple[tuple, tuple]) -> str:
    lines = [
        "# Detection latency on CPU (batch 1)",
        "",
        f"Anchor: **PicoDet main-body detector, {ANCHOR_MS} ms/image** (PP-ShiTu, CPU). Our Faster R-CNN variants",
        "below, with random weights (no internet here; latency does not depend on the weights: 1000 proposals go",
        "through the box head either way).",
        "",
        "| model | proposals | shorter side | input HxW | params (M) | eager ms/img (CPU ms) "
        "| ONNX Runtime ms/img (CPU ms) | best vs anchor | ONNX check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        onnx_ms = f"{r['onnx_ms']:.0f} ({r['onnx_cpu_ms']:.0f})" if "onnx_ms" in r else r["onnx"]
        best = min(r["eager_ms"], r.get("onnx_ms", float("inf")))
        props = r["kwargs"].get("rpn_post_nms_top_n_test", 1000)
        lines.append(f"| {r['builder']} | {props} | {r['short_side']} | {r['input']} | {r['params_m']:.1f} | "
                     f"{r['eager_ms']:.0f} ({r['eager_cpu_ms']:.0f}) | {onnx_ms} | {best / ANCHOR_MS:.1f}x slower | "
                     f"{r.get('onnx_vs_eager', '-')} |")
    lines += [
        "",
        "## How it was measured",
        "",
        "```",
        command,
        "```",
        "",
        f"- median of {args.reps} runs after {args.warmup} warm-up run(s); every run listed below (ms). "
        "ms/img is wall time; CPU ms is the process's CPU time over all its threads (what the run costs when "
        "other jobs share the cores: about 2x the wall time of an idle 2-thread run).",
        f"- torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{_version('onnxruntime')} (intra-op threads {args.threads}), {platform.processor() or platform.machine()}, "
        f"GLIBC_TUNABLES={'set' if os.environ.get('GLIBC_TUNABLES') else 'unset'}",
        f"- 1-minute load average at start / end: {load[0][0]:.1f} / {load[1][0]:.1f} on {os.cpu_count()} cores. "
        "The machine is shared: a load above the core count means other jobs ran meanwhile and these times are "
        "upper bounds.",
        "- ONNX export: `torch.onnx.export(dynamo=False, opset_version=17)` with dynamic height/width; the model "
        "does not resize (the data pipeline does), so the graph has no interpolate.",
        "",
        "| model | side | eager runs (ms) | ONNX runs (ms) | export s | ONNX MB | detections |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda xs: ", ".join(f"{x:.0f}" for x in xs) if xs else "-"  # noqa: E731
        lines.append(f"| {r['model']} | {r['short_side']} | {fmt(r.get('eager_all'))} | {fmt(r.get('onnx_all'))} | "
                     f"{r.get('export_s', 0):.0f} | {r.get('onnx_mb', 0):.0f} | {r['detections']} |")
    return "\n".join(lines) + "\n"


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except ImportError:
        return "not installed"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = ".venv/bin/python scripts/bench_detection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for size in args.sizes:
                row = bench(name, size, args, Path(tmp))
                shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()
                         if not k.endswith("_all")}
                print(shown, flush=True)
                rows.append(row)
    from src.utils.io import atomic_write_text

    atomic_write_text(args.out, render(rows, args, command.strip(), (load0, os.getloadavg())))
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
