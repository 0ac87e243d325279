"""Pure retrieval: k-NN search, metrics, the product gallery index, thresholds, live-stream matching.

Imports only numpy, faiss, sqlite3 and the standard library (no Lightning, no Hydra).
"""

from .index import GalleryIndex
from .index_base import IncompatibleIndexError, SearchResult
from .metrics import evaluate_retrieval, num_relevant_from_labels, retrieval_metrics
from .search import knn_search, l2_normalize
from .threshold import far_frr, threshold_for_far

__all__ = [
    "GalleryIndex",
    "IncompatibleIndexError",
    "SearchResult",
    "evaluate_retrieval",
    "far_frr",
    "knn_search",
    "l2_normalize",
    "num_relevant_from_labels",
    "retrieval_metrics",
    "threshold_for_far",
]
