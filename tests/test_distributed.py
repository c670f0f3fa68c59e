"""Data parallelism: sharded batches, the torchrun wrapper, and 2 x b == 1 x 2b (gloo, CPU)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from kdistill import distributed
from kdistill.checkpoint import load_checkpoint
from kdistill.config import RunConfig
from kdistill.data import Batches, Split
from kdistill.engine import CHECKPOINT
from kdistill.runs import distill
from scale_helpers import cli, torch_threads, weights, write_config, write_teacher


def _split(n: int) -> Split:
    return Split(torch.randn(n, 3), torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("n", [64, 61])
def test_rank_shards_split_each_global_batch(n):
    one = Batches(_split(n), 8, shuffle=True, seed=5)
    ranks = [Batches(_split(n), 4, shuffle=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 3):
        for b in (one, *ranks):
            b.set_epoch(epoch)
        assert len(ranks[0]) == len(ranks[1]) == len(one)  # every rank takes the same number of steps
        for whole, r0, r1 in zip(one, *ranks):
            together = torch.cat([r0["index"], r1["index"]])
            if len(whole["index"]) == 8:
                assert sorted(together.tolist()) == sorted(whole["index"].tolist())
        seen = torch.cat([b["index"] for r in ranks for b in r])
        assert set(seen.tolist()) == set(range(n))  # an odd n is padded by wrapping, not dropped
        assert len(seen) == n + n % 2


def test_nproc_execs_torchrun():
    cmd = distributed.torchrun_command(2, ["distill", "c.yaml"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and cmd[-4:] == ["-m", "kdistill", "distill", "c.yaml"]


def test_single_process_context_is_a_no_op():
    ctx = distributed.current()
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    assert ctx.all_sum([1.5, 2]) == [1.5, 2.0] and ctx.any(True) and not ctx.any(False)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, ctx) is model


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    """torchrun (via --nproc 2, gloo) with batch 16 per rank ends with the weights of one process
    with batch 32: the loss is normalised by the global count, not per rank."""
    teacher = write_teacher(tmp_path / "teacher.safetensors")
    two = write_config(tmp_path, "two", teacher=teacher, batch_size=16, limit_train=256,
                       grad_accum_steps=2)
    one = write_config(tmp_path, "one", teacher=teacher, batch_size=32, limit_train=256,
                       grad_accum_steps=2)
    proc = cli("distill", str(two), "--nproc", "2")
    with torch_threads(1):  # meanwhile, the single-process reference in this process
        distill(RunConfig.from_yaml(one))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    reference, parallel = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name, w in reference.items():
        torch.testing.assert_close(parallel[name], w, rtol=1e-5, atol=1e-6)
    log = (tmp_path / "two" / "distilled" / "metrics.jsonl").read_text().splitlines()
    assert sum(line.startswith('{"step"') for line in log) == 256 // 32 // 2  # rank 0 alone logs each step
    rng = load_checkpoint(tmp_path / "two" / "distilled" / CHECKPOINT)["torch_rng"]
    assert rng.shape[0] == 2 and not torch.equal(rng[0], rng[1])  # each rank its own dropout stream


def test_text_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    """The same for text classification: each rank takes its share of every length-grouped
    batch, so 2 processes x 8 texts end with the weights of 1 process x 16 (dropout off: the
    ranks' dropout streams differ by design)."""
    import yaml
    from safetensors.torch import load_file
    from text_helpers import text_config, tiny_bert

    from kdistill.config import HFSpec
    from kdistill.models.text import build_text_model
    from kdistill.runs.recipes.classification import save_state

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    raw = text_config(tmp_path, n=100, epochs=1)  # 80 training texts: 5 whole batches of 16
    teacher = raw["teacher"]["model"]
    torch.manual_seed(0)
    save_state(build_text_model(HFSpec(**teacher), 2), tmp_path / "teacher.safetensors")
    teacher["weights"] = str(tmp_path / "teacher.safetensors")
    raw["student"] = {**raw["student"], "config": {**tiny_bert(16, 2, 4), **no_dropout}, "dropout": 0.0}
    raw["optim"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    raw["train"].update(deterministic=False)
    paths = {}
    for name, batch in (("one", 16), ("two", 8)):
        one = {**raw, "data": {**raw["data"], "batch_size": batch},
               "train": {**raw["train"], "output_dir": str(tmp_path / name)}}
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(one))
    proc = cli("distill", str(paths["two"]), "--nproc", "2", "--no-evaluate")
    with torch_threads(1):
        distill(RunConfig.from_yaml(paths["one"]))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    reference = load_file(str(tmp_path / "one" / "distilled" / "model.safetensors"))
    parallel = load_file(str(tmp_path / "two" / "distilled" / "model.safetensors"))
    assert reference.keys() == parallel.keys()
    for name, w in reference.items():
        torch.testing.assert_close(parallel[name], w, rtol=1e-5, atol=1e-6)
    log = (tmp_path / "two" / "distilled" / "metrics.jsonl").read_text().splitlines()
    assert sum(line.startswith('{"step"') for line in log) == 80 // 16  # rank 0 alone logs each step
    summary = json.loads((tmp_path / "two" / "distilled" / "summary.json").read_text())
    assert summary["processes"] == 2
