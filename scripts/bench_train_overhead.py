"""Training throughput through the platform (src.train: Lightning, callbacks, CSV logging, progress bar) vs a
plain PyTorch loop with the same model, data, transforms, batches, optimizer, scheduler and gradient clipping,
measured step by step in one run.

    .venv/bin/python scripts/bench_train_overhead.py [--steps 16 --warmup 3] [overrides ...]

Model: conf/model/embedding.yaml (EmbeddingNet resnet18 + GeM + BNNeck, ArcFace, AdamW, warmup-cosine) with
the demo_retrieval settings (embedding 128, clip 5.0, log every 5 steps, retrieval callbacks); the demo itself
now trains MS+XBM, so its model is not used. Data: the retail world train list through the datamodule's own
train loader (aspect-ratio buckets, P x K batches, heavy augmentation, num_workers=0); `--steps` optimizer
steps, rounded up to whole epochs.

Paired design (the machine is shared, and its load swings by 2-3x within a minute): src.train runs the platform
with one extra callback. After each platform step, the callback runs one step of the plain loop: a second,
identically initialised copy of the model, its own optimizer and scheduler, and its own datamodule instance with
the same seed, so step i of both loops has the same batch shapes. Platform step time = from the end of the
previous plain step to the end of this platform step (its data loading, loop, hooks, logging, progress bar);
plain step time = fetching its batch + the hand-written step. The first `--warmup` pairs and the first pair of
each later epoch (the platform's holds the previous epoch's validation and checkpoint) are excluded; the
overhead ratio is plain img/s over platform img/s, also given as the median of the per-step ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import open_dict  # noqa: E402
from torch import nn  # noqa: E402

from src.data import keys  # noqa: E402
from src.train import train  # noqa: E402
from src.utils import resolvers  # noqa: E402,F401

# demo_retrieval's settings with conf/model/embedding.yaml's ArcFace head.
BASE = ["data=retail_retrieval", "model=embedding", "callbacks=retrieval", "trainer=cpu", "logger=csv",
        "model.net.embedding_dim=128", "trainer.gradient_clip_val=5.0", "++trainer.use_distributed_sampler=false",
        "trainer.log_every_n_steps=5", "monitor_metric=val/recall@1", "optimized_metric=test/recall@1"]


class PlainLoop:
    """The training step written by hand: no Trainer, no callbacks, no logger."""

    def __init__(self, cfg, total_steps: int) -> None:
        L.seed_everything(cfg.seed, workers=True)
        self.system = instantiate(cfg.model)  # only its nn parts are used: net, losses, optimizer/scheduler
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        self.loader = datamodule.train_dataloader()
        self.batches = iter(self.loader)
        net = self.system.net.train()
        self.system.losses.train()
        backbone = [p for p in net.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        head = [p for p in self.system.parameters() if p.requires_grad and id(p) not in ids]
        lr = self.system.optimizer_factory.keywords.get("lr", 1e-3)
        self.opt = self.system.optimizer_factory([{"params": backbone, "lr": lr * self.system.hparams.backbone_lr_mult},
                                                  {"params": head, "lr": lr}])
        factory = self.system.scheduler_factory
        self.sched = factory(self.opt, total_steps=total_steps) if factory else None
        self.clip = cfg.trainer.get("gradient_clip_val")
        self.params = backbone + head
        self.losses_seen: list[float] = []

    def step(self) -> tuple:
        batch = next(self.batches, None)
        if batch is None:  # next epoch: the sampler advances its epoch on every iter(), as under Lightning
            self.batches = iter(self.loader)
            batch = next(self.batches)
        images, labels = batch[keys.IMAGE], batch[keys.LABEL]
        emb = nn.functional.normalize(self.system.net.embed_raw(images).float(), dim=-1)
        loss = sum(self.system.loss_weights[n] * f(emb, labels) for n, f in self.system.losses.items())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.losses_seen.append(float(loss))  # a plain loop looks at its loss too
        return tuple(images.shape)


class PairedSteps(L.Callback):
    """Times each platform step, then runs and times one plain step (see the module docstring)."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.platform_s: list[float] = []
        self.plain_s: list[float] = []
        self.sizes: list[tuple[tuple, tuple]] = []
        self.epoch_start: list[bool] = []
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last is None:  # the first step: time from its start (the loop before it is set-up)
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        t0 = time.perf_counter()
        self.platform_s.append(t0 - self._last)
        n_plain = self.plain.step()
        self._last = time.perf_counter()
        self.plain_s.append(self._last - t0)
        self.sizes.append((tuple(batch[keys.IMAGE].shape), n_plain))
        self.epoch_start.append(batch_idx == 0)


def make_cfg(overrides: list[str], out_dir: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per loop (rounded up to whole epochs)")
    ap.add_argument("--warmup", type=int, default=3, help="step pairs excluded from the timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides added to BASE")
    args = ap.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        raise SystemExit("need 0 <= --warmup < --steps")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        # Whole epochs only: a run stopped by max_steps mid-epoch skips validation, and EarlyStopping then fails.
        probe = make_cfg([*BASE, *args.overrides], Path(tmp) / "probe")
        dm = instantiate(probe.data)
        dm.prepare_data()
        per_epoch = len(dm.train_dataloader())
        steps = math.ceil(args.steps / per_epoch) * per_epoch
        base = [*BASE, f"trainer.max_epochs={steps // per_epoch}",
                "trainer.limit_val_batches=1", "validate_before_fit=false", "test=false", *args.overrides]
        cfg = make_cfg(base, Path(tmp) / "run")
        paired = PairedSteps(PlainLoop(cfg, total_steps=steps))
        original = L.Trainer.__init__

        def with_paired(self, *a, callbacks=None, **kw):  # the platform's own callbacks + the pairing one
            original(self, *a, callbacks=[*(callbacks or []), paired], **kw)

        L.Trainer.__init__ = with_paired
        try:
            train(cfg)
        finally:
            L.Trainer.__init__ = original
    w = args.warmup
    if any(a != b for a, b in paired.sizes):
        raise RuntimeError(f"the loops saw different batch shapes: {paired.sizes}")
    # Timed: after warm-up, and not the first step of an epoch (the platform's one holds the previous epoch's
    # validation and checkpointing, which the plain loop does not do).
    timed = [i for i in range(len(paired.sizes)) if i >= w and not paired.epoch_start[i]]
    images = [paired.sizes[i][0][0] for i in timed]
    platform = sum(images) / sum(paired.platform_s[i] for i in timed)
    plain = sum(images) / sum(paired.plain_s[i] for i in timed)
    per_step = [paired.platform_s[i] / paired.plain_s[i] for i in timed]
    result = {"steps": len(paired.sizes), "warmup": w, "threads": args.threads, "overrides": args.overrides,
              "images": sum(images), "plain_img_s": plain, "platform_img_s": platform, "ratio": plain / platform,
              "median_step_ratio": statistics.median(per_step), "platform_step_s": paired.platform_s,
              "plain_step_s": paired.plain_s, "batch_shapes": [a for a, _ in paired.sizes],
              "timed_steps": timed}
    print("\nstep  batch shape        platform s  plain s  platform/plain")
    for i, ((shape, _), a, b) in enumerate(zip(paired.sizes, paired.platform_s, paired.plain_s)):
        note = "  (warm-up)" if i < w else "  (epoch start, not timed)" if paired.epoch_start[i] else ""
        print(f"{i:4d}  {str(list(shape)):17s}  {a:10.3f}  {b:7.3f}  {a / b:6.3f}{note}")
    print("\n| loop | images timed | img/s |\n|---|---|---|")
    print(f"| plain PyTorch | {sum(images)} | {plain:.2f} |\n| platform (src.train) | {sum(images)} | {platform:.2f} |")
    print(f"\noverhead ratio plain/platform img/s: {plain / platform:.3f}; median per-step ratio "
          f"{statistics.median(per_step):.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
