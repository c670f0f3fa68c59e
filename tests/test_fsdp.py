"""FSDP2 (train.parallel: fsdp) on CPU with gloo: 2 processes x b give the update of 1 x 2b
through the fused chunked LM loss on the sharded output layer, with the teacher sharded beside
the student; a sharded checkpoint resumes, and the saved student is a plain Hugging Face model."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdistill.config import RunConfig
from kdistill.models.hf import save_hf
from kdistill.runs import distill

from lm_helpers import tiny_llama, word_tokenizer
from scale_helpers import cli_env, torch_threads

STUDENT = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}


def _config(tmp_path, name, *, batch_size, parallel="ddp", **train):
    teacher = tmp_path / "teacher"
    if not teacher.is_dir():
        save_hf(tiny_llama(vocab=56, seed=3), word_tokenizer(50), teacher)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": " ".join(f"w{(5 * i + j) % 40 + 3}" for j in range(3)),
                                        "completion": " ".join(f"w{(3 * i + j) % 40 + 3}" for j in range(1 + i % 4))})
                            + "\n" for i in range(40)))
    raw = {"name": name, "task": "causal_lm", "seed": 1,
           "data": {"dataset": "completions_jsonl", "path": str(data), "seq_len": 12, "batch_size": batch_size,
                    "val_fraction": 0.2},
           "student": {"arch": "hf_causal_lm", "config": STUDENT},
           "teacher": {"kind": "live", "model": {"arch": "hf_causal_lm", "source": str(teacher)}},
           "loss": {"temperature": 2.0, "soft_weight": 0.7, "hard_weight": 0.3, "chunk_tokens": 8},
           "optim": {"name": "adamw", "lr": 0.01, "max_grad_norm": 1.0},
           "train": {"epochs": 2, "progress": False, "output_dir": str(tmp_path / name), "deterministic": False,
                     "grad_accum_steps": 2, "parallel": parallel, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _weights(tmp_path, name):
    return load_file(str(tmp_path / name / "distilled" / "model" / "model.safetensors"))


# After the run no sharded or DDP-wrapped module may be left, not even as uncollected garbage: one
# freed after the process group is destroyed makes gloo's threads abort the process at exit.
DRIVER = """import gc, sys
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel
from kdistill.config import RunConfig
from kdistill.runs import distill
distill(RunConfig.from_yaml(sys.argv[1]), resume="--resume" in sys.argv)
left = [type(o).__name__ for o in gc.get_objects() if isinstance(o, (FSDPModule, DistributedDataParallel))]
assert not left, f"wrapped modules outlive the process group: {left}"
"""


def _launch(path, *extra) -> subprocess.Popen:
    """runs.distill in two torchrun processes (gloo), one thread each."""
    driver = path.parent / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
           str(path), *extra]
    return subprocess.Popen(cmd, env=cli_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two(path, *extra):
    proc = _launch(path, *extra)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.slow  # ~60 s here: three runs of two processes
def test_two_sharded_processes_match_one_process_and_resume_from_sharded_checkpoints(tmp_path):
    from transformers import AutoModelForCausalLM

    one = _config(tmp_path, "one", batch_size=8)
    sharded = _config(tmp_path, "sharded", batch_size=4, parallel="fsdp")
    proc = _launch(sharded)
    with torch_threads(1):  # meanwhile the single-process reference
        distill(RunConfig.from_yaml(one))
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    reference, parallel = _weights(tmp_path, "one"), _weights(tmp_path, "sharded")
    assert set(parallel) == set(reference)
    for name, w in reference.items():
        torch.testing.assert_close(parallel[name], w, rtol=1e-4, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded" / "distilled" / "model")  # no torch.distributed
    assert not torch.equal(plain.lm_head.weight, tiny_llama(vocab=50, seed=0).lm_head.weight)
    assert (tmp_path / "sharded" / "distilled" / "checkpoint.dcp" / ".metadata").is_file()
    summary = json.loads((tmp_path / "sharded" / "distilled" / "summary.json").read_text())
    assert summary["teacher"]["sharded"] is True  # the teacher sharded beside the student
    evals = [json.loads(x)["eval"] for x in (tmp_path / "sharded" / "distilled" / "metrics.jsonl").read_text().splitlines()
             if x.startswith('{"eval"')]
    ref_evals = [json.loads(x)["eval"] for x in (tmp_path / "one" / "distilled" / "metrics.jsonl").read_text().splitlines()
                 if x.startswith('{"eval"')]
    assert [e["val_ppl"] for e in evals] == pytest.approx([e["val_ppl"] for e in ref_evals], rel=1e-4)

    # stopped after 3 steps (a checkpoint of shards), resumed: the uninterrupted run's weights
    cut = _config(tmp_path, "cut", batch_size=4, parallel="fsdp", max_steps=3)
    _two(cut)
    raw = yaml.safe_load(cut.read_text())
    raw["train"].pop("max_steps")
    cut.write_text(yaml.safe_dump(raw))
    _two(cut, "--resume")
    resumed = _weights(tmp_path, "cut")
    for name, w in parallel.items():
        torch.testing.assert_close(resumed[name], w, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~1-2 min here: two runs of two processes and a resume
def test_sharded_run_killed_mid_training_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL to the whole torchrun group after a mid-run sharded checkpoint; --resume then ends
    with the weights of the same run left alone."""
    import os
    import signal
    import time

    whole = _config(tmp_path, "whole", batch_size=4, parallel="fsdp", epochs=12, checkpoint_every_steps=3)
    _two(whole)
    killed = _config(tmp_path, "killed", batch_size=4, parallel="fsdp", epochs=12, checkpoint_every_steps=3)
    driver = killed.parent / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(driver), str(killed)], env=cli_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log, ckpt = tmp_path / "killed" / "distilled" / "metrics.jsonl", tmp_path / "killed" / "distilled" / "checkpoint.dcp"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        steps = log.read_text().count('"step"') if log.is_file() else 0
        if steps >= 8 and (ckpt / ".metadata").is_file():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: give it more steps"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "killed" / "distilled" / "model").exists()  # it died before the end
    _two(killed, "--resume")
    resumed, reference = _weights(tmp_path, "killed"), _weights(tmp_path, "whole")
    for name, w in reference.items():
        torch.testing.assert_close(resumed[name], w, rtol=1e-5, atol=1e-6)
