"""Epoch orders: seeded per (seed, epoch), sharded per rank with wrap-around padding."""

import torch

from kdistill.data.order import epoch_order, rank_batches, rank_share


def test_order_depends_only_on_seed_and_epoch():
    a = epoch_order(10, shuffle=True, seed=1, epoch=2)
    assert torch.equal(a, epoch_order(10, shuffle=True, seed=1, epoch=2))
    assert not torch.equal(a, epoch_order(10, shuffle=True, seed=1, epoch=3))
    assert sorted(a.tolist()) == list(range(10))
    assert epoch_order(4, shuffle=False, seed=9, epoch=9).tolist() == [0, 1, 2, 3]


def test_rank_shares_partition_the_order_padded_by_wrapping():
    order = torch.tensor([5, 3, 8, 1, 0])
    assert rank_share(order, 0, 2).tolist() == [5, 8, 0]
    assert rank_share(order, 1, 2).tolist() == [3, 1, 5]  # wraps around to the first sample
    assert rank_share(order, 0, 1) is order
    shards = [epoch_order(11, shuffle=True, seed=3, epoch=1, rank=r, world_size=3) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(torch.cat(shards).tolist()) == set(range(11))


def test_rank_batches_split_each_global_batch():
    batches = [torch.tensor([0, 1, 2, 3]), torch.tensor([4])]
    assert [b.tolist() for b in rank_batches(batches, 1, 2)] == [[1, 3], [4]]
    assert [b.tolist() for b in rank_batches(batches, 0, 2)] == [[0, 2], [4]]
