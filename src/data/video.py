"""Reading chosen frames of a video with OpenCV (live-stream recordings, checkout videos)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from src.data.images import resize_shorter_side

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


class VideoReadError(OSError):
    pass


@dataclass(frozen=True)
class VideoFrame:
    index: int  # frame number in the video (0-based)
    image: np.ndarray  # RGB uint8 HxWx3, resized if short_side was given
    orig_size: tuple[int, int]  # (h, w) of the decoded frame before resizing
    original: np.ndarray | None = None  # the frame before resizing, with keep_original=True


def video_info(path: str | os.PathLike) -> dict:
    """frame_count (as the container reports it: may be approximate), fps, width, height."""
    cap = _open(path)
    try:
        return {"frame_count": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), "fps": float(cap.get(cv2.CAP_PROP_FPS)),
                "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}
    finally:
        cap.release()


def _open(path: str | os.PathLike) -> cv2.VideoCapture:
    path = str(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"video file not found: {path}")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"cannot open video (corrupt or unsupported codec): {path}")
    return cap


def read_video_frames(path: str | os.PathLike, indices: Iterable[int] | None = None,
                      short_side: int | None = None, max_size: int | None = None,
                      keep_original: bool = False) -> list[VideoFrame]:
    """The frames at `indices` (sorted, duplicates once; None: every frame), RGB, shorter side resized to
    `short_side` if given. Frames are reached by decoding forward (grab), not by seeking: seeking lands on
    keyframes in many codecs and would return the wrong frame. Indices past the end are skipped with a warning;
    a video that yields no frame at all is an error."""
    wanted = None if indices is None else sorted({int(i) for i in indices})
    if wanted is not None and wanted and wanted[0] < 0:
        raise ValueError(f"{path}: frame indices must be >= 0, got {wanted[0]}")
    cap = _open(path)
    frames: list[VideoFrame] = []
    try:
        pos, k = 0, 0
        while wanted is None or k < len(wanted):
            target = pos if wanted is None else wanted[k]
            ok = True
            while pos < target and ok:  # skip without converting the frames in between
                ok = cap.grab()
                pos += 1
            if not ok or not cap.grab():
                break
            ok, bgr = cap.retrieve()
            pos += 1
            if not ok or bgr is None:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            original = rgb if keep_original else None
            rgb = resize_shorter_side(rgb, short_side, max_size)[0]
            frames.append(VideoFrame(target, rgb, (h, w), original))
            k += 1
    finally:
        cap.release()
    if wanted is not None and k < len(wanted):
        log.warning("%s: frames %s are past the end of the video (%d frames decoded); skipped",
                    path, wanted[k:], pos)
    if not frames:
        raise VideoReadError(f"{path}: no frame could be decoded at indices {wanted if wanted is not None else 'all'}")
    return frames
