"""Which float precision a run computes in.

``auto`` takes bf16 only where the hardware runs it natively -- a CUDA device with bf16, or a CPU
with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm) -- and fp32 everywhere else: a CPU
without them emulates bf16, and one step of the Hinton teacher took 320-340 ms in bf16 against
28-36 ms in fp32 on such a 2-core CPU. Forcing ``bf16`` on such a CPU is allowed, with a warning.
"""

from __future__ import annotations

import contextlib
import sys
from functools import lru_cache
from pathlib import Path

import torch

#: /proc/cpuinfo flags of CPUs that run bf16 arithmetic natively (x86: AVX512-BF16, AMX; Arm: BF16)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_warned: set[str] = set()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / Arm
            flags.update(value.split())
    return frozenset(flags)


def bf16_native(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 natively, and the evidence (the probe tests replace)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"CUDA device {torch.cuda.get_device_name(index)} {'has' if ok else 'lacks'} native bf16"
    if device.type == "cpu":
        found = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
        if found:
            return True, f"this CPU has {', '.join(found)}"
        return False, "this CPU has no AVX512-BF16 / AMX (bf16 would be emulated)"
    return False, f"bf16 is not known to be native on {device.type} devices"


def resolve_precision(requested: str, device: str | torch.device) -> tuple[str, str]:
    """The precision to compute in (fp32, bf16 or fp16) for ``requested`` on ``device``, and why.
    Warns once on stderr when bf16 is forced where it is emulated."""
    device = torch.device(device)
    if requested == "auto":
        native, why = bf16_native(device)
        return ("bf16", f"auto: {why}") if native else ("fp32", f"auto: {why}")
    if requested not in DTYPES:
        raise ValueError(f"precision must be auto, {', '.join(DTYPES)}; got {requested!r}")
    if requested == "bf16" and device.type == "cpu":
        native, why = bf16_native(device)
        if not native:
            if "cpu" not in _warned:
                _warned.add("cpu")
                print(f"warning: precision bf16 on a CPU without native bf16 ({why}): expect it to be "
                      "several times slower than fp32; set precision: auto", file=sys.stderr)
            return "bf16", f"asked for; emulated: {why}"
    return requested, "asked for"


def autocast(requested: str, device: torch.device):
    """The autocast context of a training forward pass: bf16 where ``requested`` resolves to it."""
    name, _ = resolve_precision(requested, device)
    if name == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_record(cfg) -> dict:
    """What a run's log records: the student's (train) and the teacher's precision, each with why."""
    record = {"train": dict(zip(("dtype", "reason"), resolve_precision(cfg.train.precision, cfg.train.device)))}
    teacher = getattr(cfg, "teacher", None)
    if teacher is not None and hasattr(teacher, "precision"):
        record["teacher"] = dict(zip(("dtype", "reason"),
                                     resolve_precision(teacher.precision, teacher.device or cfg.train.device)))
    return record
