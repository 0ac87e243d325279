"""Gallery-side views: what each view does, how enrolment averages them, and that the policy is part of the
fingerprint (a gallery never mixes vectors enrolled with and without views)."""

from __future__ import annotations

import numpy as np
import pytest

from src.inference.embedder import load_embedder
from src.recognition.gallery import Gallery
from src.inference.gallery_views import GALLERY_VIEWS, render_views
from src.retrieval.index_base import IncompatibleIndexError
from tests.recognition.helpers import CATALOGUE, studio_entry, studio_shot, write_tiny_checkpoint

ALL_VIEWS = ["rotate+15", "rotate-15", "soften", "darken"]


def test_views_on_a_known_image():
    img = np.zeros((40, 20, 3), np.uint8)
    img[:, :10] = 200
    img[:, 10:] = 40  # two vertical bands: detail that softening keeps, position that rotation moves
    rotated = GALLERY_VIEWS["rotate+15"](img)
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    assert rotated.shape[:2] == (round(40 * c + 20 * s), round(20 * c + 40 * s))  # whole image kept
    np.testing.assert_array_equal(GALLERY_VIEWS["darken"](img)[0, 0], [150, 150, 150])
    soft = GALLERY_VIEWS["soften"](img)
    assert soft.shape == img.shape and abs(int(soft.mean()) - int(img.mean())) <= 2
    views = render_views(img, ALL_VIEWS)
    assert len(views) == 5 and views[0] is img and all(v.dtype == np.uint8 for v in views)


def test_enrolment_is_the_normalised_mean_over_the_views(tmp_path):
    plain = load_embedder(write_tiny_checkpoint(tmp_path / "a.ckpt", tmp_path))
    viewed = load_embedder(write_tiny_checkpoint(tmp_path / "b.ckpt", tmp_path, gallery_views=ALL_VIEWS))
    assert viewed.gallery_views == tuple(ALL_VIEWS) and plain.gallery_views == ()
    images = [studio_shot(CATALOGUE[0]), studio_shot(CATALOGUE[3])]
    # Queries are embedded as they are, by either embedder.
    np.testing.assert_allclose(viewed.embed(images), plain.embed(images), atol=1e-6)
    np.testing.assert_allclose(plain.embed_gallery(images), plain.embed(images), atol=1e-6)
    expected = []
    for im in images:
        m = plain.embed(render_views(im, ALL_VIEWS)).mean(axis=0)
        expected.append(m / np.linalg.norm(m))
    got = viewed.embed_gallery(images)
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    assert not np.allclose(got, plain.embed(images), atol=1e-3)  # the views changed something
    assert viewed.embed_gallery([]).shape == (0, viewed.dim)


def test_view_policy_is_in_the_fingerprint(tmp_path):
    plain = load_embedder(write_tiny_checkpoint(tmp_path / "a.ckpt", tmp_path))
    viewed = load_embedder(write_tiny_checkpoint(tmp_path / "b.ckpt", tmp_path, gallery_views=ALL_VIEWS))
    fewer = load_embedder(write_tiny_checkpoint(tmp_path / "c.ckpt", tmp_path, gallery_views=["soften"]))
    assert len({plain.fingerprint, viewed.fingerprint, fewer.fingerprint}) == 3
    gallery = Gallery.create(viewed, tmp_path / "g")
    gallery.add([studio_entry(CATALOGUE[0])])
    with pytest.raises(IncompatibleIndexError, match="fingerprint"):
        Gallery.open(tmp_path / "g", plain)
    assert len(Gallery.open(tmp_path / "g", viewed)) == 1


def test_unknown_view_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown gallery view\(s\) \['mirror'\]; known:"):
        load_embedder(write_tiny_checkpoint(tmp_path / "x.ckpt", tmp_path, gallery_views=["mirror"]))
