"""src/retrieval is pure: importing it must not pull in torch, Lightning or Hydra (see DESIGN.md)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_retrieval_imports_no_framework():
    code = (
        "import sys, src.retrieval, src.retrieval.live_matching, src.retrieval.live_scoring\n"
        "import src.retrieval.gallery_store, src.retrieval.milvus_index\n"
        "bad = [m for m in ('torch', 'lightning', 'pytorch_lightning', 'hydra', 'omegaconf') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
