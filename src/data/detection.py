"""Object detection data: a COCO dataset in torchvision's target format, orientation-grouped batches, a
DataModule, and the COCO results writer.

Batches are dicts (keys from src.data.keys): {IMAGE: list of float CHW tensors in 0..1 (sizes differ), TARGET: list
of target dicts}.
A target holds
  boxes    float32 [N, 4] xyxy pixels of the transformed image     (what the model trains on)
  labels   int64 [N]: 1..C = position of the category in sorted-id order, or all 1 when class_agnostic
  iscrowd  int64 [N]: COCO crowd flags (crowd boxes are ignored by the loss and by COCO eval)
  image_id int64 []: the COCO image id, kept for COCO evaluation and results files
  orig_size int64 [2]: (h, w) of the image on disk; predictions are mapped back to it for evaluation

Where resizing happens: here, in the dataset transforms (multi-scale + flip for training, one shorter side for
eval). The torchvision detectors built by src.models.detectors.torchvision_models do not resize again.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torchvision.transforms.v2 import Compose

from src.data import keys
from src.data.detection_transforms import eval_transforms, train_transforms
from src.data.images import ImageReadError, SkipCounter, read_rgb
from src.data.readers import DataFormatError, load_coco
from src.data.split_datamodule import SplitDataModule
from src.utils.io import atomic_write_json

log = logging.getLogger(__name__)

AGNOSTIC_CATEGORY = {"id": 1, "name": "product"}


class CocoDetectionDataset(Dataset):
    """Images and boxes of a COCO detection file validated by `load_coco`.

    image_root: folder that `file_name`s are relative to (default: the annotation file's folder).
    transform: `t(image_uint8_hwc, target) -> (image_tensor, target)`; default: to-tensor only.
    Boxes narrower or lower than `min_box_size` px after the transform are dropped with a warning: torchvision's
    detectors reject degenerate boxes, and a sub-pixel object cannot be learned anyway.
    """

    def __init__(self, ann_file: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 transform=None, class_agnostic: bool = False, on_error: str = "skip",
                 min_box_size: float = 1.0) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.ann_file = Path(ann_file)
        data = load_coco(self.ann_file)
        self.image_root = Path(image_root) if image_root is not None else self.ann_file.parent
        self.transform = transform if transform is not None else eval_transforms(None)
        self.class_agnostic = class_agnostic
        self.on_error = on_error
        self.min_box_size = min_box_size
        self.skipped = SkipCounter()
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.source_categories = [{"id": c["id"], "name": c.get("name", str(c["id"]))} for c in cats]
        self.cat_to_label = {c["id"]: (1 if class_agnostic else i + 1) for i, c in enumerate(cats)}
        self.categories = [AGNOSTIC_CATEGORY] if class_agnostic else self.source_categories
        self.images = list(data["images"])
        self.anns: dict = defaultdict(list)
        for a in data["annotations"]:
            self.anns[a["image_id"]].append(a)

    @property
    def num_classes(self) -> int:
        """Foreground classes (C); the model's labels are 1..C."""
        return len(self.categories)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return {i + 1: c["id"] for i, c in enumerate(self.categories)}

    def aspect_ratios(self) -> np.ndarray:
        """width / height from the annotation file (no decoding)."""
        return np.array([im["width"] / im["height"] for im in self.images], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.images)

    def raw_target(self, idx: int) -> dict:
        im = self.images[idx]
        anns = self.anns.get(im["id"], [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        return {
            "boxes": boxes,
            "labels": np.array([self.cat_to_label[a["category_id"]] for a in anns], dtype=np.int64),
            "iscrowd": np.array([int(a.get("iscrowd", 0)) for a in anns], dtype=np.int64),
            "ann_ids": [a.get("id") for a in anns],
        }

    def __getitem__(self, idx: int) -> dict | None:
        im = self.images[idx]
        path = str(self.image_root / im["file_name"])
        try:
            image = read_rgb(path)
        except ImageReadError as e:
            if self.on_error == "raise":
                raise
            self.skipped.skip(path, e)
            return None
        h, w = image.shape[:2]
        if (h, w) != (im["height"], im["width"]):
            raise DataFormatError(f"{self.ann_file}: image {im['id']} ({path}) is {w}x{h} on disk but "
                                  f"{im['width']}x{im['height']} in the annotations")
        target = self.raw_target(idx)
        image, target = self.transform(image, target)
        return {keys.IMAGE: image, keys.TARGET: self._finish_target(target, image, im, (h, w))}

    def _finish_target(self, target: dict, image: torch.Tensor, im: dict, orig_hw: tuple[int, int]) -> dict:
        boxes = torch.as_tensor(np.asarray(target["boxes"], dtype=np.float32)).reshape(-1, 4)
        H, W = image.shape[-2:]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)  # COCO tolerates a pixel outside; the model must not
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        if not bool(keep.all()):
            dropped = [a for a, k in zip(target["ann_ids"], keep.tolist()) if not k]
            log.warning("%s: image %s: dropped %d box(es) smaller than %.1f px after transforms (annotation ids %s)",
                        self.ann_file, im["id"], len(dropped), self.min_box_size, dropped)
        return {
            "boxes": boxes[keep],
            "labels": torch.as_tensor(target["labels"], dtype=torch.int64)[keep],
            "iscrowd": torch.as_tensor(target["iscrowd"], dtype=torch.int64)[keep],
            "image_id": torch.tensor(int(im["id"])),
            "orig_size": torch.tensor(orig_hw, dtype=torch.int64),
        }


def collate_detection(batch: list[dict | None]) -> dict | None:
    """Lists, not stacks: detection images differ in size (the model pads). None if nothing was readable."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return {keys.IMAGE: [b[keys.IMAGE] for b in batch], keys.TARGET: [b[keys.TARGET] for b in batch]}


def orientation_groups(ratios: Iterable[float]) -> list[int]:
    """0 for landscape/square (w >= h), 1 for portrait: batches of one group pad little."""
    return [0 if r >= 1.0 else 1 for r in ratios]


class GroupedBatchSampler(BatchSampler):
    """Groups indices by a given group id (detection: `orientation_groups`, landscape vs portrait) and yields
    plain index lists, each from one group (torchvision references' GroupedBatchSampler), so padding to the
    largest image in the batch wastes little. Images keep their own sizes (compare
    src.data.batch_samplers.AspectBucketResizeBatchSampler, which also chooses each batch's shape).

    Indices are bucketed by group in sampler order; a bucket is emitted when full. At the end the leftovers
    of all buckets are chunked in group order, so the batch count equals a plain BatchSampler's
    (ceil(N / B), or floor with drop_last) without drawing from the sampler to count. Subclassing BatchSampler
    with a `sampler` first argument lets Lightning swap in a DistributedSampler under DDP."""

    def __init__(self, sampler: Sampler | Sequence[int], group_ids: Sequence[int], batch_size: int,
                 drop_last: bool = False) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.group_ids = list(group_ids)

    def __iter__(self):
        buckets: dict[int, list[int]] = defaultdict(list)
        for idx in self.sampler:
            g = self.group_ids[idx]
            buckets[g].append(idx)
            if len(buckets[g]) == self.batch_size:
                yield buckets.pop(g)
        rest = [i for g in sorted(buckets) for i in buckets[g]]
        for start in range(0, len(rest), self.batch_size):
            chunk = rest[start:start + self.batch_size]
            if len(chunk) == self.batch_size or not self.drop_last:
                yield chunk


def scale_boxes(boxes: torch.Tensor, from_hw: Sequence[int], to_hw: Sequence[int]) -> torch.Tensor:
    """Map xyxy boxes from an image of size from_hw to the same image at to_hw (per-axis scale)."""
    sy, sx = float(to_hw[0]) / float(from_hw[0]), float(to_hw[1]) / float(from_hw[1])
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def to_coco_results(predictions: Sequence[Mapping], image_ids: Sequence[int],
                    label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
                    score_threshold: float = 0.0) -> list[dict]:
    """COCO results ("detections") list: {image_id, category_id, bbox [x, y, w, h], score} per box.
    predictions[i] = {boxes xyxy, scores, labels} for image_ids[i], in that image's original pixels.
    label_to_category_id: dict or sequence indexed by label; None keeps labels as category ids."""
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} image ids")
    results = []
    for pred, image_id in zip(predictions, image_ids):
        boxes = torch.as_tensor(pred["boxes"]).detach().float().cpu().reshape(-1, 4)
        scores = torch.as_tensor(pred["scores"]).detach().float().cpu().reshape(-1)
        labels = torch.as_tensor(pred["labels"]).detach().cpu().reshape(-1)
        for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            if s < score_threshold:
                continue
            cat = int(label_to_category_id[int(lab)]) if label_to_category_id is not None else int(lab)
            results.append({"image_id": int(image_id), "category_id": cat,
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                            "score": round(float(s), 5)})
    return results


def write_coco_results(path: str | os.PathLike, results: list[dict]) -> Path:
    """Atomically write a results list that `pycocotools.COCO.loadRes` reads."""
    path = Path(path)
    atomic_write_json(path, results)
    return path


class DetectionDataModule(SplitDataModule):
    """COCO detection splits under `source.root` (annotation paths relative to it; image `file_name`s relative
    to `image_root`, default the source root as the retail world writes them).

    class_agnostic: every box is one "product" class (the main-body detector).
    num_classes: the foreground classes the model expects; checked against the annotation file in setup().
    train_sizes / max_size: multi-scale shorter side for training; eval_size: the shorter side for val/test.
    """

    def __init__(
        self,
        source,
        train_ann: str,
        val_ann: str,
        test_ann: str | None = None,
        image_root: str | None = None,
        class_agnostic: bool = False,
        num_classes: int | None = None,
        train_sizes: Sequence[int] = (208, 240, 272, 304),
        eval_size: int | None = 240,
        max_size: int | None = 512,
        hflip_prob: float = 0.5,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_aspect_ratio: bool = True,
        on_error: str = "skip",
        pin_memory: bool = False,
    ) -> None:
        super().__init__(source, batch_size, eval_batch_size, num_workers, on_error, pin_memory)
        self.anns = {"train": train_ann, "val": val_ann, "test": test_ann or val_ann}
        self.image_root = image_root
        self.class_agnostic = class_agnostic
        self.expected_classes = num_classes
        self.train_sizes, self.eval_size, self.max_size = list(train_sizes), eval_size, max_size
        self.hflip_prob = hflip_prob
        self.group_by_aspect_ratio = group_by_aspect_ratio

    def transform(self, split: str) -> Compose:
        if split == "train":
            return train_transforms(self.train_sizes, self.max_size, self.hflip_prob)
        return eval_transforms(self.eval_size, self.max_size)

    def _dataset(self, split: str) -> CocoDetectionDataset:
        root = Path(self.source.root)
        ds = CocoDetectionDataset(root / self.anns[split], root / self.image_root if self.image_root else root,
                                  self.transform(split), self.class_agnostic, self.on_error)
        if self.expected_classes is not None and ds.num_classes != self.expected_classes:
            raise DataFormatError(
                f"{ds.ann_file}: {ds.num_classes} categories (class_agnostic={self.class_agnostic}) but "
                f"data.num_classes={self.expected_classes}")
        return ds

    def infer_num_classes(self) -> int:
        """Foreground classes when `num_classes` is not given: the training annotation file's categories."""
        self.expected_classes = self._dataset("train").num_classes
        return self.expected_classes

    @property
    def categories(self) -> list[dict]:
        """[{id, name}] in label order (label = position + 1)."""
        ds = next(iter(self.datasets.values()), None)
        if ds is None:
            raise RuntimeError("DetectionDataModule.categories: call setup() first")
        return ds.categories

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def _loader(self, split: str) -> DataLoader:
        ds = self.datasets[split]
        train = split == "train"
        bs = self.batch_size if train else self.eval_batch_size
        sampler = RandomSampler(ds) if train else SequentialSampler(ds)
        drop_last = train and len(ds) > bs
        if self.group_by_aspect_ratio:
            batch_sampler = GroupedBatchSampler(sampler, orientation_groups(ds.aspect_ratios()), bs, drop_last)
        else:
            batch_sampler = BatchSampler(sampler, bs, drop_last)
        return DataLoader(ds, batch_sampler=batch_sampler, num_workers=self.num_workers,
                          collate_fn=collate_detection, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
