"""Aspect-ratio bucketed batches vs a fixed square resize (and, for reference, letterbox padding) on the retail
world train set: pixels per image, aspect distortion, loader and training images/s.

    .venv/bin/python scripts/bench_bucketing.py [--epochs-for-stats 20] [--threads 2] [overrides ...]

Data and batches as in conf/data/retail_retrieval.yaml (the demo's data): P x K = 16 x 4 identity batches, the
heavy training augmentation, base size `data.image_size` (64). Buckets: the data config's
AspectBucketResizeBatchSampler (src.data.batch_samplers; scales 0.875/1/1.125, sizes multiples of 8). Square:
PKBatchSampler + Resize to image_size x image_size. Letterbox: longest side to image_size, zero padding to a
square.

* pixels / image: H * W of the tensor the network sees (letterbox also: the share that is image, not padding);
* distortion of one image: max(r, 1/r) with r = (H_out / W_out) / (h / w), 1.0 = shape kept; statistics over
  every (image, size) the sampler yields in `--epochs-for-stats` epochs (no decoding needed);
* loader images/s: one epoch through the DataLoader (decode, resize, augment, collate), num_workers=0;
* train images/s: forward + backward + AdamW step of conf/model/embedding.yaml (EmbeddingNet resnet18, ArcFace,
  embedding 128) on the first `--train-batches` batches just loaded: a first pass (every shape new) and the
  median of `--rounds` timed passes, methods alternating within a round (steady state of a long run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from src.data import keys  # noqa: E402
from src.data.batch_samplers import PKBatchSampler  # noqa: E402
from src.data.datasets import ImageDataset, collate_skip_none  # noqa: E402
from src.data.retrieval import image_aspects  # noqa: E402
from src.utils import resolvers  # noqa: E402,F401


class FixedSize:
    """Wraps a batch sampler of indices so every item carries the same (h, w): the dataset resizes to it."""

    def __init__(self, sampler, size: int) -> None:
        self.sampler, self.size = sampler, (size, size)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield [(i, self.size) for i in batch]


def size_stats(batches: list[list], aspects: np.ndarray, letterbox: int | None = None) -> dict:
    """Pixels per image and distortion over (index, (h, w)) items; `letterbox`: side of the padded square."""
    items = [(i, hw) for b in batches for i, hw in b]
    a = aspects[[i for i, _ in items]]
    if letterbox:
        pixels = np.full(len(items), float(letterbox**2))
        useful = np.minimum(a, 1 / a)  # content fills the long side; the short side is aspect-scaled
        distortion = np.ones(len(items))
    else:
        hw = np.array([hw for _, hw in items], dtype=np.float64)
        pixels = hw[:, 0] * hw[:, 1]
        useful = np.ones(len(items))
        r = (hw[:, 0] / hw[:, 1]) / a
        distortion = np.maximum(r, 1 / r)
    return {"pixels_per_image": float(pixels.mean()), "useful_pixel_share": float(useful.mean()),
            "distortion_mean": float(distortion.mean()), "distortion_p95": float(np.percentile(distortion, 95)),
            "share_distorted_over_10pct": float((distortion > 1.1).mean())}


def train_throughput(cfg, batches_by_method: dict[str, list[dict]], rounds: int) -> dict[str, dict]:
    """Training images/s per method: one untimed warm-up pass (meets every batch shape once: oneDNN picks
    kernels, the allocator grows), then `rounds` timed passes, the methods alternating within each round so that
    load from other processes hits them alike. Reports the first-pass rate and the median of the timed ones."""
    state = {}
    for name in batches_by_method:
        torch.manual_seed(0)
        system = instantiate(cfg.model)
        state[name] = (system, torch.optim.AdamW(system.parameters(), lr=1e-3))

    def one_pass(name: str) -> float:
        system, opt = state[name]
        start = time.perf_counter()
        for batch in batches_by_method[name]:
            emb = nn.functional.normalize(system.net.embed_raw(batch[keys.IMAGE]), dim=-1)
            loss = sum(f(emb, batch[keys.LABEL]) for f in system.losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return sum(b[keys.IMAGE].shape[0] for b in batches_by_method[name]) / (time.perf_counter() - start)

    first = {name: one_pass(name) for name in batches_by_method}
    timed = {name: [] for name in batches_by_method}
    for _ in range(rounds):
        for name in batches_by_method:
            timed[name].append(one_pass(name))
    return {name: {"train_img_s_first_pass": first[name], "train_img_s": float(np.median(timed[name])),
                   "train_img_s_rounds": timed[name]} for name in batches_by_method}


def run_loader(loader) -> tuple[list[dict], float]:
    start, batches = time.perf_counter(), []
    for batch in loader:
        if batch is not None:
            batches.append(batch)
    n = sum(b[keys.IMAGE].shape[0] for b in batches)
    return batches, n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs-for-stats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-batches", type=int, default=4, help="batches per pass of the training measurement")
    ap.add_argument("--rounds", type=int, default=3, help="timed training passes per method")
    ap.add_argument("--json", type=Path)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (data=retail_retrieval model=embedding)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=retail_retrieval", "model=embedding", "model.net.embedding_dim=128",
                                          *args.overrides])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    ds = dm.dataset("train")
    aspects = image_aspects(ds)
    side = int(cfg.data.image_size)
    p, k = cfg.data.batch_sampler.pk

    def samplers():
        yield "buckets", dm.batch_sampler_factory(labels=ds.labels, aspects=aspects), dm.train_transform, None
        yield "square resize", FixedSize(PKBatchSampler(ds.labels, p=p, k=k), side), dm.train_transform, None
        pad = A.Compose([A.LongestMaxSize(side), A.PadIfNeeded(side, side, border_mode=0, fill=0),
                         dm.train_transform])
        yield "letterbox", PKBatchSampler(ds.labels, p=p, k=k), pad, side

    rows, loaded = [], {}
    for name, sampler, transform, letterbox in samplers():
        stats_batches = []
        for epoch in range(args.epochs_for_stats):
            inner = getattr(sampler, "sampler", sampler)
            inner.set_epoch(epoch)
            stats_batches += [b if letterbox is None else [(i, None) for i in b] for b in sampler]
        stats = size_stats(stats_batches, aspects, letterbox)
        getattr(sampler, "sampler", sampler).set_epoch(0)
        loader = DataLoader(ImageDataset(ds.samples, transform), batch_sampler=sampler, num_workers=0,
                            collate_fn=collate_skip_none)
        batches, loader_ips = run_loader(loader)
        loaded[name] = batches[: args.train_batches]
        timed_px = float(np.mean([b[keys.IMAGE].shape[-2] * b[keys.IMAGE].shape[-1] for b in loaded[name]
                                  for _ in range(b[keys.IMAGE].shape[0])]))
        rows.append({"method": name, **stats, "loader_img_s": loader_ips, "batches": len(loaded[name]),
                     "train_batches_pixels_per_image": timed_px,
                     "shapes": sorted({tuple(b[keys.IMAGE].shape[-2:]) for b in loaded[name]})})
    for row, (name, rates) in zip(rows, train_throughput(cfg, loaded, args.rounds).items()):
        row.update(rates)
        print(row, flush=True)

    print(f"\ntrain set: {len(ds)} images, aspect h/w percentiles 5/50/95: "
          f"{np.percentile(aspects, [5, 50, 95]).round(2).tolist()}")
    print("\n| method | pixels / image | image share of pixels | mean distortion | p95 distortion "
          "| images > 10% distorted | loader img/s | train img/s 1st pass | train img/s (median) "
          "| pixels / image in the train batches |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['pixels_per_image']:.0f} | {r['useful_pixel_share']:.2f} | "
              f"{r['distortion_mean']:.3f} | {r['distortion_p95']:.3f} | {r['share_distorted_over_10pct']:.2f} | "
              f"{r['loader_img_s']:.1f} | {r['train_img_s_first_pass']:.1f} | {r['train_img_s']:.1f} | "
              f"{r['train_batches_pixels_per_image']:.0f} |")
    result = {"overrides": args.overrides, "threads": args.threads, "num_images": len(ds), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
