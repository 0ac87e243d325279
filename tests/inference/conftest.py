"""Fixtures for the inference tests: a tiny embedder checkpoint as src.train writes them."""

from __future__ import annotations

import pytest

from tests.recognition.helpers import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_ckpt_inference")
    return write_tiny_checkpoint(tmp / "tiny.ckpt", tmp)
