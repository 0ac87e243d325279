"""Average the weights of saved checkpoints (e.g. the last N epochs) into one loadable checkpoint.

    python scripts/average_checkpoints.py ckpt1 ckpt2 ckpt3 --out outputs/.../checkpoints/avg.ckpt
    python scripts/average_checkpoints.py --last 3 outputs/.../checkpoints --out .../avg_last3.ckpt

The result keeps the last checkpoint's config (hydra_config), so `python -m src.eval ckpt_path=<out>` works.
With --last N and a folder: the N checkpoints with the highest epoch (from the checkpoint's own 'epoch' field).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.nn.averaging import average_checkpoints  # noqa: E402
from src.utils.io import atomic_write_bytes  # noqa: E402


def last_epoch_checkpoints(folder: Path, n: int) -> list[Path]:
    found = []
    for p in sorted(folder.glob("*.ckpt")):
        if p.name.startswith(("last", "avg", "ema")):
            continue  # copies or derived weights, not one epoch each
        epoch = torch.load(p, map_location="cpu", weights_only=True).get("epoch")
        if epoch is not None:
            found.append((int(epoch), p))
    if len(found) < n:
        raise FileNotFoundError(f"{folder}: {len(found)} epoch checkpoints, need {n} (save_top_k=-1 keeps all)")
    return [p for _, p in sorted(found)[-n:]]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="checkpoint files, or one folder with --last")
    ap.add_argument("--last", type=int, help="average the N latest-epoch checkpoints of the folder")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.last:
        if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
            ap.error("--last takes exactly one checkpoint folder")
        paths = last_epoch_checkpoints(Path(args.inputs[0]), args.last)
    else:
        paths = [Path(p) for p in args.inputs]
    ckpt = average_checkpoints(paths)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"averaged {len(paths)} checkpoints -> {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
