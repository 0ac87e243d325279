"""End-to-end checkout latency of one counter photo (640x480) against a 100k-product HNSW32 gallery, split into
detect / embed / search: the eager checkpoints (today's path) beside the same models through ONNX Runtime, and
the one-stage FCOS detector beside Faster R-CNN, on the same photos, gallery and threads, in one run.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 flock /tmp/heavy.lock \\
    .venv/bin/python scripts/bench_checkout.py --embedder EMB.ckpt --detector FRCNN.ckpt --fcos FCOS.ckpt \\
        [--threads 2] [--n 100000] [--photos 20] [--reps 3]

Gallery: the catalogue embedded by --embedder plus random unit filler vectors up to --n (HNSW32, efSearch 64,
GalleryIndex's default), searched as the pipeline searches at checkout (top-1 plus the runner-up SKU for the
margin test). Every pipeline sees every photo once per rep, the pipelines taking turns photo by photo so load
from other jobs spreads over all of them. ONNX files are exported here (src.inference.export) and checked
against eager by the export. PP-ShiTu's anchor: ~0.2 s per image with a 100k+ gallery on CPU.
Writes experiments/checkout_latency/README.md + results.json (atomically).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.inference.detector import load_detector  # noqa: E402
from src.inference.embedder import load_embedder  # noqa: E402
from src.inference.export import export_checkpoint  # noqa: E402
from src.recognition.gallery import embed_entries  # noqa: E402
from src.recognition.pipeline import RecognitionPipeline  # noqa: E402
from src.recognition.world import catalogue_entries, counter_scenes  # noqa: E402
from src.retrieval.index import GalleryIndex  # noqa: E402
from src.retrieval.search import l2_normalize  # noqa: E402
from src.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

OUT = ROOT / "experiments" / "checkout_latency"
PARTS = ("detect_ms", "embed_ms", "search_ms", "total_ms")


def world_root(path: str | None) -> Path:
    if path:
        return Path(path)
    from src.data.sources import RetailWorld

    source = RetailWorld(str(ROOT / "data" / "retail_world"))
    source.prepare()
    return Path(source.root)


def gallery_index(embedder, entries, n: int, seed: int = 0) -> tuple[GalleryIndex, float]:
    """The catalogue's vectors plus random unit filler up to n rows, in an HNSW32 GalleryIndex."""
    vecs = embed_entries(embedder, entries, gallery=True)
    filler = l2_normalize(np.random.default_rng(seed).standard_normal((n - len(vecs), vecs.shape[1]), np.float32))
    rows = [e.row() for e in entries] + [{"sku": f"filler-{i}", "price": 1.0, "image_path": f"filler/{i}"}
                                         for i in range(len(filler))]
    index = GalleryIndex(vecs.shape[1], embedder.fingerprint, factory="HNSW32")
    t = time.perf_counter()
    index.add(np.concatenate([vecs, filler]), rows)
    return index, time.perf_counter() - t


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}


def skus(result) -> list:
    return sorted(str(i["sku"]) for i in result.items) + sorted("?" for _ in result.unknown)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", required=True, help="EmbeddingSystem checkpoint (.ckpt)")
    ap.add_argument("--detector", required=True, help="Faster R-CNN DetectionSystem checkpoint: today's path")
    ap.add_argument("--fcos", required=True, help="FCOS DetectionSystem checkpoint (fcos_lite0_mainbody)")
    ap.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and faiss threads")
    ap.add_argument("--n", type=int, default=100_000, help="gallery rows")
    ap.add_argument("--photos", type=int, default=20, help="val counter photos")
    ap.add_argument("--reps", type=int, default=3, help="passes over the photos")
    ap.add_argument("--det-threshold", type=float, default=0.5, help="detector score threshold (eval_checkout's)")
    ap.add_argument("--world", help="retail world folder (default: data/retail_world's default spec)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    res: dict = {"command": "python scripts/bench_checkout.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
                 "threads": args.threads, "load_average_start": os.getloadavg()[0], "torch": torch.__version__}
    world = world_root(args.world)
    scenes = counter_scenes(world, "val")[: args.photos]
    images = [s.image() for s in scenes]
    res["photo_shape"] = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    with tempfile.TemporaryDirectory() as tmp:
        exports = {k: export_checkpoint(getattr(args, k), Path(tmp) / f"{k}.onnx",
                                        example_image=None if k == "embedder" else images[0])
                   for k in ("embedder", "detector", "fcos")}
        res["onnx_export_checks"] = {k: {x: v for x, v in r.items() if x not in ("onnx", "settings", "kind")}
                                     for k, r in exports.items()}
        embedders = {"eager": load_embedder(args.embedder),
                     "onnx": load_embedder(Path(tmp) / "embedder.onnx", threads=args.threads)}
        detectors = {f"{k} {kind}": load_detector(path, score_threshold=args.det_threshold,
                                                  **({"threads": args.threads} if kind == "onnx" else {}))
                     for k in ("detector", "fcos")
                     for kind, path in (("eager", getattr(args, k)), ("onnx", Path(tmp) / f"{k}.onnx"))}
        index, build_s = gallery_index(embedders["eager"], catalogue_entries(world), args.n)
        res["gallery"] = {"rows": len(index), "dim": index.dim, "hnsw32_build_s": build_s}
        print(f"HNSW32 gallery of {len(index)} x {index.dim} built in {build_s:.0f} s", flush=True)
        names = {"Faster R-CNN eager + embedder eager (today)": ("detector eager", "eager"),
                 "Faster R-CNN ONNX + embedder ONNX": ("detector onnx", "onnx"),
                 "FCOS eager + embedder eager": ("fcos eager", "eager"),
                 "FCOS ONNX + embedder ONNX": ("fcos onnx", "onnx")}
        pipes = {n: RecognitionPipeline(embedders[e], index, detectors[d]) for n, (d, e) in names.items()}
        for pipe in pipes.values():  # warm-up: allocations, lazy initialisation, ORT's first runs
            for im in images[:2]:
                pipe.recognize(im)
        times = {n: {k: [] for k in PARTS} for n in pipes}
        answers = {n: [] for n in pipes}
        for rep in range(args.reps):
            for im in images:
                for n, pipe in pipes.items():
                    r = pipe.recognize(im)
                    for k in PARTS:
                        times[n][k].append(r.timings[k])
                    if rep == 0:
                        answers[n].append(skus(r))
            print(f"pass {rep + 1}/{args.reps}: " + ", ".join(
                f"{n.split(' +')[0]} {np.median(t['total_ms']):.0f} ms" for n, t in times.items()), flush=True)
    res["pipelines"] = {n: {k: summary(v) for k, v in t.items()} | {
        "results_per_photo": float(np.mean([len(a) for a in answers[n]]))} for n, t in times.items()}
    pairs = {"Faster R-CNN": ("Faster R-CNN eager + embedder eager (today)", "Faster R-CNN ONNX + embedder ONNX"),
             "FCOS": ("FCOS eager + embedder eager", "FCOS ONNX + embedder ONNX")}
    onnx_same = {d: sum(a == b for a, b in zip(answers[e], answers[o])) for d, (e, o) in pairs.items()}
    res["onnx_same_answers"] = {d: f"{k} of {len(images)}" for d, k in onnx_same.items()}
    res["load_average_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", res)
    atomic_write_text(args.out / "README.md", render(res))
    print(render(res))
    return res


def render(r: dict) -> str:
    g = r["gallery"]
    lines = ["# Checkout latency, end to end (issue 15)", "", "Written by `scripts/bench_checkout.py`:", "", "```",
             r["command"], "```", "",
             f"One counter photo ({', '.join(r['photo_shape'])}) per call of `RecognitionPipeline.recognize`: detect, "
             f"crop, embed the crops as one batch, search a {g['rows']:,} x {g['dim']} HNSW32 gallery (the catalogue + "
             f"random unit filler; built in {g['hnsw32_build_s']:.0f} s). {r['threads']} threads for torch, ONNX "
             f"Runtime and faiss; 1-minute load average {r['load_average_start']:.1f} at start, "
             f"{r['load_average_end']:.1f} at end (2 cores). ms per photo, mean / median / p90 over every pass:", "",
             "| pipeline | detect | embed | search | total | results / photo |", "|---|---:|---:|---:|---:|---:|"]
    for name, v in r["pipelines"].items():
        cells = " | ".join(f"{v[k]['mean']:.0f} / {v[k]['median']:.0f} / {v[k]['p90']:.0f}" for k in PARTS)
        lines.append(f"| {name} | {cells} | {v['results_per_photo']:.1f} |")
    lines += ["", "PP-ShiTu's anchor: ~0.2 s per image with a 100k+ gallery on CPU.", "",
              "Same answers (SKUs and unknown boxes per photo) through ONNX Runtime as eager: " + ", ".join(
                  f"{d} {v}" for d, v in r["onnx_same_answers"].items()) + ".", "",
              "ONNX exports checked against eager by `src.inference.export`: " + "; ".join(
                  f"{k}: " + ", ".join(f"{x} {y}" for x, y in v.items()) for k, v in r["onnx_export_checks"].items()),
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
