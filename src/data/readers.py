"""Readers for the formats real datasets come in: image lists, ImageFolder trees and COCO JSON.
Every error names the file (and line) at fault, so a bad row in a million-line list is found at once."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DataFormatError(ValueError):
    """Raised for malformed annotation files; the message names the file and, where relevant, the line."""


@dataclass(frozen=True)
class Sample:
    path: str  # absolute path of the image
    label: int
    uid: str  # unique id (third column of an image list, else the relative path)


def read_image_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None,
                    check_files: bool = True) -> list[Sample]:
    """PaddleClas / AliProducts format: `relative/path label [unique_id]`, whitespace separated, `#` comments.
    Paths are relative to `root` (default: the list's folder)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"image list not found: {list_file}")
    root = Path(root) if root is not None else list_file.parent
    samples: list[Sample] = []
    seen: set[str] = set()
    with open(list_file, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) not in (2, 3):
                raise DataFormatError(
                    f"{list_file}:{lineno}: expected 'path label [unique_id]' (2 or 3 columns), got {len(parts)}: {line!r}")
            rel, label_s = parts[0], parts[1]
            try:
                label = int(label_s)
            except ValueError:
                raise DataFormatError(f"{list_file}:{lineno}: label must be an integer, got {label_s!r}") from None
            if label < 0:
                raise DataFormatError(f"{list_file}:{lineno}: label must be >= 0, got {label}")
            uid = parts[2] if len(parts) == 3 else rel
            if uid in seen:
                raise DataFormatError(f"{list_file}:{lineno}: duplicate unique id {uid!r}")
            seen.add(uid)
            path = root / rel
            if check_files and not path.is_file():
                raise DataFormatError(f"{list_file}:{lineno}: image file not found: {path}")
            samples.append(Sample(str(path), label, uid))
    if not samples:
        raise DataFormatError(f"{list_file}: image list is empty")
    return samples


def read_image_folder(root: str | os.PathLike, class_names: list[str] | None = None) -> tuple[list[Sample], list[str]]:
    """torchvision ImageFolder layout: `root/<class_name>/<image>`; classes sorted by name unless given."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataFormatError(f"{root}: class folders not in class_names: {unknown}")
    samples = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append(Sample(str(p), label, str(p.relative_to(root))))
    if not samples:
        raise DataFormatError(f"{root}: no images with extensions {IMAGE_EXTENSIONS} in class folders")
    return samples, classes


def read_samples(fmt: str, path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Sample]:
    """Dispatch on the configured format name; an unknown name is a clear error, not a guess."""
    if fmt == "image_list":
        return read_image_list(path, root)
    if fmt == "image_folder":
        return read_image_folder(path)[0]
    raise DataFormatError(f"unknown data format {fmt!r} for {path}; expected 'image_list' or 'image_folder'")


def load_coco(path: str | os.PathLike) -> dict:
    """Load and validate a COCO detection JSON: images, annotations and categories, ids consistent, boxes sane.
    Returns the parsed dict. Invalid boxes are errors naming the annotation id, never a crash in the model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: COCO annotation file is empty")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data or not isinstance(data[key], list):
            raise DataFormatError(f"{path}: missing list '{key}' (not a COCO detection file?)")
    if not data["images"]:
        raise DataFormatError(f"{path}: no images")
    images = {}
    for im in data["images"]:
        for key in ("id", "file_name", "width", "height"):
            if key not in im:
                raise DataFormatError(f"{path}: image entry {im.get('id', '?')} lacks '{key}'")
        images[im["id"]] = im
    cat_ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        aid = ann.get("id", "?")
        if ann.get("image_id") not in images:
            raise DataFormatError(f"{path}: annotation {aid} refers to unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in cat_ids:
            raise DataFormatError(f"{path}: annotation {aid} has unknown category_id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise DataFormatError(f"{path}: annotation {aid} bbox must be [x, y, w, h], got {bbox!r}")
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            raise DataFormatError(f"{path}: annotation {aid} has non-positive box size w={w}, h={h}")
        im = images[ann["image_id"]]
        if x < 0 or y < 0 or x + w > im["width"] + 1 or y + h > im["height"] + 1:
            raise DataFormatError(
                f"{path}: annotation {aid} box {bbox} lies outside image {im['id']} ({im['width']}x{im['height']})")
    return data
