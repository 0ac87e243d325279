"""Export a trained classifier to ONNX (BatchNorm folded into convolutions first) and check it with ONNX Runtime.

    python scripts/export_onnx.py <ckpt> --out model.onnx [--image-size 224] [--no-fuse]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.inference.onnx import OrtClassifier, export_onnx  # noqa: E402
from src.nn.fuse import fuse_conv_bn  # noqa: E402
from src.utils import resolvers  # noqa: E402,F401
from src.utils.checkpoint import load_system  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, help="default: data.image_size of the checkpoint's config")
    ap.add_argument("--no-fuse", action="store_true")
    args = ap.parse_args(argv)
    system, cfg = load_system(args.ckpt)
    size = args.image_size or int(cfg.data.image_size)
    net = system.net.eval()
    example = torch.randn(2, 3, size, size)
    if not args.no_fuse:
        net, pairs = fuse_conv_bn(net, example[:1])
        print(f"folded {len(pairs)} BatchNorm layers into convolutions")
    out = export_onnx(net, args.out, size)
    with torch.no_grad():
        ref = system.net(example).numpy()
    got = OrtClassifier(out)(example)
    print(f"wrote {out}; max |onnx - torch| logit difference {np.abs(got - ref).max():.2e}")
    return out


if __name__ == "__main__":
    main()
