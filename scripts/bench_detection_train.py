"""Training images/s on CPU: torchvision vs mmdet Faster R-CNN R50-FPN on the same retail-world counter scenes.

    python scripts/bench_detection_train.py [--steps 4] [--threads 2] [--out experiments/detection_train_speed]

Same batches (2 scenes, shorter side 320, one class), one SGD step each, from scratch with trainable BatchNorm in
every model. Paired design: within each step the models take turns on the same batch, so load from other jobs
hits all of them alike. Needs the mmdet backend (`make install-mmdet`). Writes results.json (atomically).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from src.data.retail_world.catalogue import make_catalogue  # noqa: E402
from src.data.retail_world.scenes import counter_scene  # noqa: E402
from src.models.detectors.mmdet_adapter import MMDetDetector  # noqa: E402
from src.models.detectors.torchvision_models import fasterrcnn  # noqa: E402
from src.utils.io import atomic_write_json  # noqa: E402

BATCH, SIDE = 2, 320


def scenes(step: int, skus) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = [], []
    for k in range(BATCH):
        img, objects = counter_scene(skus, (240, 320), np.random.default_rng(step * BATCH + k), 4, 6)
        s = SIDE / 240
        img = cv2.resize(img, (round(320 * s), SIDE), interpolation=cv2.INTER_LINEAR)
        images.append(torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div_(255))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]) * s
        targets.append({"boxes": boxes.float(), "labels": torch.ones(len(boxes), dtype=torch.int64)})
    return images, targets


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "experiments/detection_train_speed"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    skus = make_catalogue(8, 2, 0)
    models = {
        "torchvision fasterrcnn_resnet50_fpn (v1)": fasterrcnn("fasterrcnn_resnet50_fpn", num_classes=2),
        "torchvision fasterrcnn_resnet50_fpn_v2": fasterrcnn("fasterrcnn_resnet50_fpn_v2", num_classes=2),
        "mmdet faster-rcnn_r50_fpn_1x (adapter)": MMDetDetector(
            "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", num_classes=1,
            cfg_options={"backbone": {"frozen_stages": -1, "norm_eval": False}}),
    }
    optimizers = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
                  for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    load_before = os.getloadavg()[0]
    for step in tqdm(range(args.warmup + args.steps), desc="steps"):
        images, targets = scenes(step, skus)
        for name, model in models.items():
            model.train()
            t = time.perf_counter()
            loss = sum(model(images, targets).values())
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t)
    rows = {name: {"params_m": round(sum(p.numel() for p in models[name].parameters()) / 1e6, 1),
                   "s_per_step_median": round(statistics.median(ts), 3), "s_per_step_min": round(min(ts), 3),
                   "train_images_per_s": round(BATCH / statistics.median(ts), 3)} for name, ts in times.items()}
    result = {"batch": BATCH, "image_hw": list(images[0].shape[1:]), "timed_steps": args.steps,
              "threads": args.threads, "load_avg_before_after": [load_before, os.getloadavg()[0]], "models": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", result)
    print("| model | params (M) | s/step median (min) | train img/s |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params_m']} | {r['s_per_step_median']} ({r['s_per_step_min']}) | "
              f"{r['train_images_per_s']} |")


if __name__ == "__main__":
    main()
