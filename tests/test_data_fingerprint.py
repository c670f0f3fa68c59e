"""Per-sample input fingerprints: exact per row, so a split's once-computed fingerprints are those
of any batch drawn from it."""

import torch

from kdistill.data import Batches, Split
from kdistill.data.fingerprint import fingerprint, split_fingerprints


def test_fingerprints_ignore_batch_size_and_padding_width():
    x = torch.rand(6, 1, 4, 4)
    assert torch.equal(fingerprint(x)[2:4], fingerprint(x[2:4]))
    assert fingerprint(x)[0] != fingerprint(x.roll(1, -1))[0]
    ids = torch.tensor([[2, 7, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    wide = {"input_ids": ids, "attention_mask": mask}
    narrow = {"input_ids": ids[:, :4], "attention_mask": mask[:, :4]}
    assert torch.equal(fingerprint(wide), fingerprint(narrow))


def test_split_fingerprints_in_chunks_equal_the_whole_and_any_batch():
    x = torch.rand(37, 3, 5, 5)
    whole = fingerprint(x)
    assert torch.equal(split_fingerprints(x, chunk=8), whole)
    idx = torch.tensor([30, 2, 17])
    assert torch.equal(split_fingerprints(x)[idx], fingerprint(x[idx]))
    assert split_fingerprints(x[:0]).shape == (0,)


def test_batches_carry_fingerprints_only_when_asked_and_unaugmented():
    split = Split(torch.rand(20, 1, 6, 6), torch.arange(20) % 3)
    for batch in Batches(split, 8, shuffle=True, fingerprints=True):
        assert torch.equal(batch["input_fingerprint"], fingerprint(batch["inputs"]))
    assert "input_fingerprint" not in next(iter(Batches(split, 8)))
    assert "input_fingerprint" not in next(iter(Batches(split, 8, augment="jitter", fingerprints=True)))
    split.inputs = split.inputs.flip(-1)  # replaced inputs: fingerprinted afresh
    batch = next(iter(Batches(split, 8, fingerprints=True)))
    assert torch.equal(batch["input_fingerprint"], fingerprint(batch["inputs"]))
