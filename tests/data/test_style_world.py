"""Style world: deterministic bytes, skewed class counts, cached by parameters."""

import hashlib

import pytest

from src.data.readers import read_image_list
from src.data.style_world import STYLES, StyleSpec, StyleWorld, ensure_style_world, split_counts

SMALL = dict(num_train=70, num_val=14, num_test=14, image_size=32)


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_skewed_and_cached(tmp_path):
    a = ensure_style_world(tmp_path / "a", **SMALL)
    b = ensure_style_world(tmp_path / "b", **SMALL)
    assert digest(a) == digest(b)
    samples = read_image_list(a / "lists" / "train.txt", a)
    counts = [sum(s.label == c for s in samples) for c in range(len(STYLES))]
    assert counts == split_counts(70, StyleSpec().proportions) and counts[0] > 5 * counts[-1]
    mtime = (a / "DONE").stat().st_mtime_ns
    assert ensure_style_world(tmp_path / "a", **SMALL) == a and (a / "DONE").stat().st_mtime_ns == mtime
    assert StyleSpec(**SMALL).tag != StyleSpec(**{**SMALL, "seed": 1}).tag


def test_source_and_bad_spec(tmp_path):
    src = StyleWorld(str(tmp_path), **SMALL)
    src.prepare()
    assert (src.root / "lists" / "test.txt").is_file()
    with pytest.raises(ValueError, match="proportions"):
        StyleSpec(proportions=(0.5, 0.5))
