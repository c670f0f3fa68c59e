"""Data parallelism through torch.distributed, and a clean stop on SIGTERM / Ctrl-C.

Launched by ``torchrun --nproc_per_node=N -m kdistill distill CONFIG`` (or ``kdistill distill
--nproc N``, which execs exactly that), every process runs the same run: it joins torchrun's
process group (gloo on CPU, nccl on CUDA), wraps the student in DistributedDataParallel (or, with
``train.parallel: fsdp``, shards it with FSDP2: each rank holds 1/N of the weights, gradients
and optimizer state), keeps its own copy of the teacher and iterates its shard of each epoch's
shuffled order. Only rank 0 logs,
evaluates and writes checkpoints, weights and summaries. In a plain single process every helper
here is a no-op, so the engine has one code path.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank 0 of 1 outside torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over every rank (in float64)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj):
        """``obj`` of every rank, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (so all ranks act together)."""
        return self.all_sum([float(flag)])[0] > 0


def current() -> Context:
    """The context of the process group this process has joined (or a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def session(device: str) -> Iterator[Context]:
    """Join torchrun's process group for the duration of a run: gloo for CPU students, nccl for
    CUDA ones (each process on GPU ``LOCAL_RANK``). Outside torchrun, or with one process, it
    yields a single-process context and does nothing."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if not launched_by_torchrun() or world == 1 or dist.is_initialized():
        yield current()
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield current()
        dist.barrier()  # rank 0's files are complete before any rank returns
    finally:
        gc.collect()  # what still holds the group's tensors goes now, while the interpreter can free them
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel around the student when there are several ranks (it broadcasts
    rank 0's weights at construction and averages gradients during backward)."""
    if ctx.world_size == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if on_cuda else None)


def no_sync(model: nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce (FSDP's reduce-scatter) on all but the last micro-batch of
    an accumulated step."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


# ---------------------------------------------------------------- FSDP2 (train.parallel: fsdp)
def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: the modules a Hugging Face model names in
    ``_no_split_modules`` (its decoder layers), else none (the root alone is sharded)."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(view: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2 in place: ``fully_shard`` each transformer block, then the root (the embedding, final
    norm and output layer: the root stays unsharded from its forward to the end of backward, so
    the fused loss reads the whole output layer). Parameters become DTensors on ``device``;
    build the optimizer after this."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in transformer_blocks(view):
        fully_shard(block, mesh=mesh)
    return fully_shard(view, mesh=mesh)


def save_sharded(model: nn.Module, optimizer, folder, step: int) -> None:
    """Every rank writes its shards of the model and optimizer (torch.distributed.checkpoint)
    into ``folder``, through a temporary folder renamed when all are done."""
    import shutil
    from pathlib import Path

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if dist.get_rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd, "step": torch.tensor(step)}, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_sharded(model: nn.Module, optimizer, folder) -> int:
    """Load this rank's shards written by ``save_sharded``; returns the step they were saved at."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "step": torch.tensor(-1)}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["step"])


def gather_full(view: nn.Module, target: nn.Module, prefix: str, is_main: bool) -> None:
    """The sharded model's full state dict (a collective: every rank calls it) loaded into
    ``target`` on rank 0, a plain module kept on the meta device until now: what is saved is an
    ordinary model (save_pretrained loads it back without torch.distributed)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(view, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return
    target.to_empty(device="cpu")
    target.load_state_dict({k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}, strict=False)
    if hasattr(target, "tie_weights"):  # to_empty untied shared weights (and a full state dict may name one)
        target.tie_weights()


class GracefulStop:
    """Within the block, SIGTERM and SIGINT (Ctrl-C) set ``signum`` instead of killing the
    process, so the engine can finish the step, write a checkpoint and exit; a second signal
    acts as usual. Outside the main thread signals cannot be caught and this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"kdistill: {signal.Signals(signum).name} received: finishing this step, then "
              "writing a checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The torchrun command line that runs ``kdistill ARGS`` in ``nproc`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "kdistill", *args]


def exec_torchrun(nproc: int, args: Sequence[str]) -> None:
    """Replace this process with torchrun (``kdistill distill --nproc N``): torchrun itself
    spawns, watches and stops the workers."""
    cmd = torchrun_command(nproc, args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
