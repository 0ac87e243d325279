"""Export a trained embedder, classifier or detector to ONNX, with its inference settings next to it, and
check it against eager with ONNX Runtime (src/inference/export.py).

    python scripts/export_onnx.py <ckpt> --out model.onnx [--image-size N] [--no-fuse] [--example-image PHOTO]

Serve the result like the checkpoint: `python -m src.service --embedder model.onnx ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.inference.export import export_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, help="detectors: the example's shorter side (default: eval_size); "
                    "others: the probe image size for a size-keeping transform")
    ap.add_argument("--no-fuse", action="store_true", help="keep BatchNorm layers (embedders, classifiers)")
    ap.add_argument("--example-image", help="detectors: a photo to trace on, one the detector finds products in "
                    "(default: random pixels, which a trained Faster R-CNN may find nothing in: refused)")
    args = ap.parse_args(argv)
    example = None
    if args.example_image:
        from src.data.images import read_rgb

        example = read_rgb(args.example_image)
    report = export_checkpoint(args.ckpt, args.out, fuse=not args.no_fuse, image_size=args.image_size,
                               example_image=example)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
