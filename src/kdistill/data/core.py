"""Splits held as tensors, and a batch iterator without per-sample Python overhead."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from kdistill.data.fingerprint import split_fingerprints
from kdistill.data.order import EpochBatches
from kdistill.errors import DataError


UNLABELED = -100  # the label of a transfer-set sample without one: cross-entropy's ignore_index skips it


@dataclass
class Split:
    """One split of a classification dataset, held in memory."""

    inputs: torch.Tensor
    labels: torch.Tensor
    name: str = "train"

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"{self.name} split: {self.inputs.shape[0]} inputs but {self.labels.shape[0]} labels"
            )
        if self.labels.dtype != torch.long:
            self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, n: int) -> "Split":
        return Split(self.inputs[:n], self.labels[:n], self.name)

    def __add__(self, other: "Split") -> "Split":
        return Split(torch.cat([self.inputs, other.inputs]), torch.cat([self.labels, other.labels]), self.name)

    def bootstrap(self, seed: int) -> "Split":
        """As many samples drawn with replacement (Breiman's bagging): about 63% of them, some
        twice or more; members trained on different draws disagree on the samples they lack."""
        picks = torch.randint(len(self), (len(self),), generator=torch.Generator().manual_seed(seed))
        return Split(self.inputs[picks], self.labels[picks], self.name)

    def fingerprints(self) -> torch.Tensor:
        """(N,) ``kdistill.data.fingerprint`` of every sample's inputs, computed on first use
        (and again if ``inputs`` was replaced)."""
        cached = self.__dict__.get("_fingerprints")
        if cached is None or cached[0] is not self.inputs:
            cached = self.__dict__["_fingerprints"] = (self.inputs, split_fingerprints(self.inputs))
        return cached[1]


class TransferSet:
    """Splits that may hold unlabelled training samples (``unlabeled``) beside ``train``."""

    def transfer_set(self):
        """What a student is distilled on: the labelled training samples, then the unlabelled ones
        (the teacher's soft targets cover both, the hard term only the labelled)."""
        return self.train if self.unlabeled is None else self.train + self.unlabeled


@dataclass
class DataSplits(TransferSet):
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    identity: str = ""  # names the data for teacher caches: dataset, split sizes, transform
    unlabeled: Split | None = None  # extra training inputs for distillation only (labels UNLABELED)

    def __post_init__(self) -> None:
        from kdistill.validate import check_split_shapes

        check_split_shapes(self.input_shape, (self.train, self.val, self.test), self.identity or "data")
        for split in (self.train, self.val, self.test):
            if split is None or len(split) == 0:
                continue
            lo, hi = int(split.labels.min()), int(split.labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise DataError(
                    f"{split.name} split has label {hi if hi >= self.num_classes else lo}, outside "
                    f"0..{self.num_classes - 1}: fix the labels or the class count"
                )


def jitter(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with zeros (batched)."""
    n, *_, h, w = images.shape
    pad = max_shift
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # n, h
    cols = (dx[:, None] + torch.arange(w)[None, :])  # n, w
    batch_idx = torch.arange(n)[:, None, None]
    flat = padded.reshape(n, -1, padded.shape[-2], padded.shape[-1])
    out = flat[batch_idx, :, rows[:, :, None], cols[:, None, :]]  # n, h, w, c
    return out.permute(0, 3, 1, 2).reshape(images.shape)


def random_affine(images: torch.Tensor, max_shift: int, degrees: float, scale: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by up to ``degrees``, zoom by a factor in 1 +- ``scale`` and shift by up
    to ``max_shift`` pixels (bilinear, zero fill; batched)."""
    n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    uniform = lambda: torch.rand(n, generator=generator) * 2 - 1
    angle, zoom = uniform() * math.radians(degrees), 1 + uniform() * scale
    shift_x, shift_y = uniform() * (2 * max_shift / w), uniform() * (2 * max_shift / h)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    flat = images.reshape(n, -1, h, w)
    grid = F.affine_grid(theta.to(flat.dtype), list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, align_corners=False).reshape(images.shape)


class Batches(EpochBatches):
    """Iterates a split in (optionally shuffled) batches by tensor slicing.

    The order of epoch ``e`` depends only on (seed, e), so a resumed run sees exactly the batches
    an uninterrupted run would. Jitter augmentation draws from its own per-epoch generator.
    With ``fingerprints`` (and no augmentation) batches carry ``input_fingerprint``, the split's
    per-sample fingerprints computed once, so a memoized teacher checks its stored outputs without
    hashing every batch of every epoch.

    With ``world_size`` > 1 each rank takes its share of that order (kdistill.data.order), so N
    processes x batch b train on the same samples per step as 1 process x batch N*b.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: str = "none",
        jitter_pixels: int = 2,
        affine: tuple[float, float] = (10.0, 0.1),
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        fingerprints: bool = False,
    ):
        super().__init__(len(split), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         rank=rank, world_size=world_size)
        self.split, self.augment, self.jitter_pixels, self.affine = split, augment, jitter_pixels, affine
        self.fingerprints = fingerprints and augment == "none"

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        aug_gen = torch.Generator().manual_seed(self.seed * 7_000_009 + self.epoch + 1)
        for idx in self.index_batches():
            inputs = self.split.inputs.index_select(0, idx)  # a third of advanced indexing's cost
            if self.augment == "jitter":
                inputs = jitter(inputs, self.jitter_pixels, aug_gen)
            elif self.augment == "affine":
                inputs = random_affine(inputs, self.jitter_pixels, *self.affine, aug_gen)
            batch = {"inputs": inputs, "labels": self.split.labels.index_select(0, idx), "index": idx}
            if self.fingerprints:
                batch["input_fingerprint"] = self.split.fingerprints().index_select(0, idx)
            yield batch
