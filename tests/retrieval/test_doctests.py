"""The docstring examples are part of the documentation: keep them true."""

import doctest

import pytest

import src.retrieval.metrics
import src.retrieval.search
import src.retrieval.threshold


# live_matching's example (box_iou) moved with the function to src/utils/boxes.py: tests/utils/test_boxes.py.
@pytest.mark.parametrize("module", [src.retrieval.search, src.retrieval.metrics, src.retrieval.threshold])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
