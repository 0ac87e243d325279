"""Gather the out-of-fold predictions of a k-fold multirun into one soft-label file.

    python scripts/gather_oof.py <multirun dir or fold run dirs...> --out data/style_oof/soft_labels.npz \
        [--train-list <data root>/lists/train.txt]

Each fold run (experiment=mnv3s_style_oof_fold data.fold=i) wrote <run>/predictions/test_probs.npz: softmax
probabilities on its held-out fold, by sample uid. The output .npz (uids, probs, labels) feeds
experiment=mnv3s_style_oof data.soft_labels=<out>; a .csv copy is written beside it for reading.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.readers import read_image_list  # noqa: E402
from src.data.soft_labels import gather_oof  # noqa: E402
from src.utils.io import atomic_write_bytes, atomic_write_text  # noqa: E402


def find_prediction_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(p.rglob("predictions/test_probs*.npz"))
        else:
            raise FileNotFoundError(f"not a file or folder: {p}")
    if not files:
        raise FileNotFoundError(f"no predictions/test_probs*.npz under {paths} (did the fold runs finish?)")
    return files


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="multirun folder(s), fold run folders or test_probs.npz files")
    ap.add_argument("--out", required=True, help="output .npz (uids, probs, labels)")
    ap.add_argument("--train-list", help="image list whose every uid must have an out-of-fold prediction")
    args = ap.parse_args(argv)
    files = find_prediction_files(args.runs)
    expected = [s.uid for s in read_image_list(args.train_list, check_files=False)] if args.train_list else None
    uids, probs, labels = gather_oof([str(f) for f in files], expected)
    out = Path(args.out)
    buf = io.BytesIO()
    np.savez(buf, uids=uids, probs=probs, labels=labels)
    atomic_write_bytes(out, buf.getvalue())
    rows = [f"{u},{int(y)}," + ",".join(f"{v:.6f}" for v in p) for u, y, p in zip(uids, labels, probs)]
    header = "uid,label," + ",".join(f"p{c}" for c in range(probs.shape[1]))
    atomic_write_text(out.with_suffix(".csv"), "\n".join([header, *rows]) + "\n")
    acc = float((probs.argmax(1) == labels).mean())
    print(f"gathered {len(uids)} out-of-fold predictions from {len(files)} files "
          f"(OOF accuracy {acc:.4f}) -> {out}")
    return out


if __name__ == "__main__":
    main()
