"""Per-sample fingerprints of model inputs: what lets a memoized teacher serve a stored output
only for the very inputs it was computed on.

``fingerprint`` hashes each row exactly (integer arithmetic on the values' bits), so the value of
a sample does not depend on the batch it came in: a split's fingerprints computed once
(``Split.fingerprints``) equal those of any batch drawn from it, and ``Batches`` hands them out
with each batch instead of hashing every batch of every epoch again.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@lru_cache(maxsize=64)
def _position_weights(width: int) -> np.ndarray:
    return ((np.arange(width, dtype=np.int64) * 40503 + 1) % 65521 + 1).astype(np.int32)


def fingerprint(inputs) -> torch.Tensor:
    """(N,) int64: a per-sample hash of a tensor or a dict of tensors (the first dimension is the
    sample), exact and so independent of batch size; for token inputs with an attention mask,
    independent of the padding width too. In numpy, single-threaded: on a busy machine every
    multi-threaded torch op per batch can wait a scheduler slice for its second thread."""
    tensors = inputs if isinstance(inputs, dict) else {"inputs": inputs}
    mask = tensors.get("attention_mask")
    mask = None if mask is None else mask.detach().cpu().numpy()
    key = None
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().flatten(1).contiguous()
        a = t.view(_BITS[t.element_size()]).numpy() if t.is_floating_point() else t.numpy()
        if a.dtype.itemsize == 8:
            a = a ^ (a >> 32)  # fold 64-bit values into the 32 bits kept below
        if mask is not None and a.shape == mask.shape:
            a = a * mask
        # the int32 products wrap (deterministically); the sum accumulates them in int64
        part = (a.astype(np.int32) * _position_weights(a.shape[1])).sum(1, dtype=np.int64)
        key = part if key is None else key * 1_000_003 + part
    return torch.from_numpy(key)


def split_fingerprints(inputs: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``fingerprint`` of every row of a split's inputs, in chunks (bounded extra memory)."""
    return torch.cat([fingerprint(inputs[i: i + chunk]) for i in range(0, inputs.shape[0], chunk)]) \
        if inputs.shape[0] else torch.empty(0, dtype=torch.long)
