"""CPU latency, batch 1: the one-stage FCOS Lite0 detector beside Faster R-CNN MobileNetV3-FPN (150 proposals, the
fastest two-stage one in experiments/detection_latency), eager PyTorch vs ONNX Runtime, at 320 / 416 / 640 px.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
    flock /tmp/heavy.lock .venv/bin/python scripts/bench_one_stage.py [--fcos-ckpt run/checkpoints/x.ckpt]

Same image, timing and ORT settings as scripts/bench_detection.py (a retail-world counter scene at each shorter
side, 4:3; eager and ORT alternate run by run; the minimum of --reps runs, with the median). FCOS: the packaged
ImageNet Lite0 body with a random head, or a trained checkpoint (`--fcos-ckpt`). The work of FCOS's dense pass is
fixed by the image size; only its post-processing depends on the weights: a random head scores every location
near sqrt(0.01 * 0.5) = 0.07 > score_thresh 0.05, so all top candidates of every level go to NMS (the worst case),
while a trained head passes few. Faster R-CNN: random weights, BatchNorm calibrated (bench_detection.calibrate_bn);
its 150 proposals go through the box head whatever the weights.
Writes (or replaces) its section of experiments/detection_latency/README.md, between markers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from bench_detection import (ANCHOR_MS, _version, calibrate_bn, run_grid, scene_image, time_runners,  # noqa: E402
                             timed)
from src.inference.onnx import export_detector_onnx  # noqa: E402

OUT = ROOT / "experiments/detection_latency/README.md"
START, END = "<!-- bench_one_stage: start -->", "<!-- bench_one_stage: end -->"


# FCOS with other timm bodies, for latency only: no ImageNet weights install offline for them (random weights,
# BatchNorm calibrated; a random head is post-processing's worst case, see above).
BODIES = {"fcos_lcnet100": "lcnet_100", "fcos_mnv3l": "mobilenetv3_large_100"}
MODELS = ["fcos_lite0", "frcnn_mnv3_p150", "frcnn_mnv3", *BODIES]


def build(name: str, size: int, fcos_ckpt: Path | None, frcnn_ckpt: Path | None = None
          ) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if name.startswith("frcnn") and frcnn_ckpt is not None:  # e.g. experiment=frcnn_mnv3_counter's checkpoint
        from src.inference.checkpoint import load_network

        model = load_network(frcnn_ckpt, None)[0].eval()
        if name == "frcnn_mnv3_p150":  # torchvision's mobilenet_v3_large_320_fpn preset; as trained otherwise
            model.rpn._pre_nms_top_n["testing"] = model.rpn._post_nms_top_n["testing"] = 150
        return model, f"trained ({frcnn_ckpt.name})"
    if name == "frcnn_mnv3":
        raise SystemExit("--models frcnn_mnv3 (the proposals it was trained with) needs --frcnn-ckpt")
    if name in BODIES:
        from src.models.detectors.one_stage import fcos

        model = fcos(BODIES[name], num_classes=1).eval()
        calibrate_bn(model, size)
        return model, "random, BN calibrated"
    if name == "fcos_lite0":
        if fcos_ckpt is not None:
            from src.inference.checkpoint import load_network

            return load_network(fcos_ckpt, None)[0].eval(), f"trained ({fcos_ckpt.name})"
        from src.models.detectors.one_stage import fcos

        return fcos(num_classes=1, pretrained=True, frozen_bn=True).eval(), "ImageNet body, random head"
    from src.models.detectors.torchvision_models import fasterrcnn

    model = fasterrcnn("fasterrcnn_mobilenet_v3_large_fpn", num_classes=2, rpn_pre_nms_top_n_test=150,
                       rpn_post_nms_top_n_test=150).eval()
    calibrate_bn(model, size)
    return model, "random, BN calibrated"


def describe(model: torch.nn.Module) -> str:
    if hasattr(model, "head") and hasattr(model.head, "classification_head"):
        fpn = model.backbone.fpn.layer_blocks[0][0].out_channels
        tower = model.head.classification_head.conv
        convs = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in tower)
        kind = "separable" if any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in tower) else "conv"
        body = getattr(model.backbone.body, "pretrained_cfg", {}).get("architecture", "Lite0")
        return f"FCOS {body}, FPN {fpn} ch P3-P6, {convs}-{kind} towers"
    return f"Faster R-CNN MobileNetV3-L FPN, {model.rpn._post_nms_top_n['testing']} proposals"


def bench(name: str, size: int, threads: int, args, tmp: Path) -> dict:
    import onnxruntime as ort

    torch.set_num_threads(threads)
    model, weights = build(name, size, args.fcos_ckpt, args.frcnn_ckpt)
    image = scene_image(size)
    if args.square:  # PicoDet's benchmark shape (320x320): the middle of the 4:3 scene
        left = (image.shape[2] - size) // 2
        image = image[:, :, left:left + size].contiguous()
    row = {"model": name, "arch": describe(model), "weights": weights, "short_side": size, "threads": threads,
           "input": f"{image.shape[1]}x{image.shape[2]}",
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    with torch.inference_mode():
        ref = model([image])[0]
    row["detections"] = len(ref["boxes"])
    path = tmp / f"{name}_{size}.onnx"
    export_detector_onnx(model, path, image)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as bench_detection: no stolen cores
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}
    boxes, labels, scores = (torch.from_numpy(a) for a in sess.run(None, feed))
    same = boxes.shape == ref["boxes"].shape
    row["onnx_check"] = (f"{len(boxes)} boxes, max diff {float((boxes - ref['boxes']).abs().max()) if same and len(boxes) else 0:.1e} px"
                         f", scores {float((scores - ref['scores']).abs().max()) if same and len(boxes) else 0:.1e}"
                         if same else f"{len(boxes)} ONNX vs {len(ref['boxes'])} eager boxes")
    runners = {"eager": lambda: model([image]), "onnx": lambda: sess.run(None, feed)}
    time_runners(runners, args, row)
    with torch.inference_mode():  # where eager time goes: the backbone (body + FPN) alone on the padded input
        padded = model.transform([image])[0].tensors
        model.backbone(padded)  # warm-up
        row["eager_backbone_min"] = min(timed(lambda: model.backbone(padded)) for _ in range(args.reps))
    path.unlink(missing_ok=True)
    return row


def render(rows: list[dict], args, command: str, load: tuple) -> str:
    lines = [
        START,
        "## One-stage FCOS Lite0 vs Faster R-CNN MobileNetV3 (issue 15)",
        "",
        f"Anchor: PicoDet, {ANCHOR_MS} ms/image. Written by `scripts/bench_one_stage.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:",
        "",
        "```",
        command,
        "```",
        "",
        "| model | weights | shorter side | input HxW | params (M) | threads | eager ms min (median) "
        "| eager backbone ms min | ONNX Runtime ms min (median) | best vs anchor | detections | ONNX vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = min(r["eager_min"], r["onnx_min"])
        ratio = best / ANCHOR_MS
        vs = f"{ratio:.1f}x slower" if ratio > 1 else f"{1 / ratio:.1f}x faster"
        lines.append(f"| {r['arch']} | {r['weights']} | {r['short_side']} | {r['input']} | {r['params_m']:.1f} | "
                     f"{r['threads']} | {r['eager_min']:.0f} ({r['eager_median']:.0f}) | "
                     f"{r['eager_backbone_min']:.0f} | {r['onnx_min']:.1f} ({r['onnx_median']:.1f}) | {vs} | "
                     f"{r['detections']} | {r['onnx_check']} |")
    lines += [
        "",
        f"- {args.reps} runs each after {args.warmup} warm-up run(s), eager and ONNX Runtime alternating; minimum "
        "(median). torch " + torch.__version__ + ", onnxruntime " + _version("onnxruntime") + " (spinning off), "
        "same intra-op threads for both; ONNX: `src.inference.onnx.export_detector_onnx` (opset 17, dynamic "
        "height/width).",
        f"- 1-minute load average at start / end: {load[0][0]:.1f} / {load[1][0]:.1f} on {os.cpu_count()} cores "
        "(the heavy-work lock held; other agents' light work may still run: times are upper bounds).",
        "- eager backbone: body + FPN alone on the padded input (eager), the rest of eager is head + post-processing.",
        "",
        "| model | side | threads | eager runs (ms) | ONNX runs (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda xs: ", ".join(f"{x:.0f}" for x in xs)  # noqa: E731
        lines.append(f"| {r['model']} | {r['short_side']} | {r['threads']} | {fmt(r['eager_all'])} | "
                     f"{fmt(r['onnx_all'])} |")
    return "\n".join(lines) + "\n" + END + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this script's section of the README (between the markers), or append it; the rest is kept."""
    from src.utils.io import atomic_write_text

    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fcos_lite0", "frcnn_mnv3_p150"], choices=MODELS)
    ap.add_argument("--square", action="store_true", help="square inputs (size x size) instead of 4:3")
    ap.add_argument("--sizes", nargs="+", type=int, default=[320, 416, 640])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--fcos-ckpt", type=Path, default=None, help="a trained DetectionSystem checkpoint of FCOS")
    ap.add_argument("--frcnn-ckpt", type=Path, default=None,
                    help="a trained Faster R-CNN MobileNetV3 checkpoint (frcnn_mnv3_counter) for the frcnn rows")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    command = ".venv/bin/python scripts/bench_one_stage.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load0 = os.getloadavg()
    rows = run_grid(bench, args)
    write_section(args.out, render(rows, args, command.strip(), (load0, os.getloadavg())))
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
