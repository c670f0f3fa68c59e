"""The order in which a batch iterator visits a split: seeded per epoch, sharded per rank.

Epoch e's order depends only on (seed, e), so a resumed run sees exactly the batches an
uninterrupted one would. Under torchrun each rank takes every ``world_size``-th element, padded by
wrapping around so every rank gets the same number (as DistributedSampler does): rank r's k-th
batch is then part of the single-process k-th batch of ``world_size`` times the size, and N
processes x batch b train on the same samples per step as 1 process x batch N*b.
"""

from __future__ import annotations

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that draws epoch ``epoch``'s order for ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def rank_share(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s every-``world_size``-th element of ``order``, padded by wrapping around so
    every rank takes the same number."""
    if world_size == 1:
        return order
    n = len(order)
    padded = -(-n // world_size) * world_size
    return order.repeat(-(-padded // n))[:padded][rank::world_size]


def epoch_order(n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """This rank's sample indices for one epoch: ``0..n-1`` in order, or shuffled by
    ``epoch_generator(seed, epoch)`` (or by ``generator``, left advanced for a caller that draws
    more from it), then sharded with :func:`rank_share`."""
    if not shuffle:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=generator or epoch_generator(seed, epoch))
    return rank_share(order, rank, world_size)


def rank_batches(global_batches: list[torch.Tensor], rank: int, world_size: int) -> list[torch.Tensor]:
    """Rank ``rank``'s share of each global batch (for iterators that form batches at the global
    batch size, e.g. grouped by length): every rank gets one batch per global batch."""
    return [rank_share(b, rank, world_size) for b in global_batches]


class EpochBatches:
    """What the batch iterators share: the epoch (``set_epoch``), this rank's order of the
    ``n`` samples, and its batches of indices (``drop_last``: no short final batch)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = -(-self.n // self.world_size)  # this rank's share
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        return epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                           rank=self.rank, world_size=self.world_size)

    def index_batches(self) -> list[torch.Tensor]:
        """This rank's batches of sample indices for the epoch (an iterator that groups samples,
        e.g. by length, overrides this)."""
        order = self.order()
        return [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]
