"""One CPU timing harness: the comparison table (kdistill.evaluate) and the export report
(kdistill.export) time models through it, so the same model gets the same latency in both.

The policy, in one place: torch pinned to ``threads`` intra-op threads (1 by default: stable
numbers on a shared CPU, and the batch-1 figure an edge device cares about); ``warmup`` untimed
calls at batch 1 and one at the large batch; then ``repeats_b1`` timed batch-1 calls and
``repeats_large`` timed large-batch calls, every variant timed once per round in rotating order
(so machine load hits them alike), stopping early once a phase has spent ``budget_s`` per variant
and timed ``min_repeats`` rounds (a big model on a slow machine costs seconds, not minutes).
Latency is the median and the 95th percentile (linear interpolation) of the batch-1 calls;
throughput is the large batch's size over its median call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

THREADS = 1
WARMUP = 5
REPEATS_B1 = 200
REPEATS_LARGE = 10
BUDGET_S = 2.0
MIN_REPEATS = 3

Call = Callable[[], object]
Runner = Callable[[object], Call]  # prepared inputs -> a zero-argument call of one forward pass


@dataclass
class Timing:
    latency_ms_b1_median: float
    latency_ms_b1_p95: float
    throughput_per_s: float


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    return torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100).item()


def time_calls(fn: Call, repeats: int, warmup: int = WARMUP, budget_s: float | None = None,
               min_repeats: int = MIN_REPEATS) -> list[float]:
    """Wall-clock seconds of up to ``repeats`` calls of ``fn`` after ``warmup`` untimed calls;
    with ``budget_s``, stops once that much time is spent and ``min_repeats`` calls are timed."""
    return _rounds({"fn": fn}, repeats, warmup, budget_s, min_repeats)["fn"]


def _rounds(calls: dict[str, Call], repeats: int, warmup: int, budget_s: float | None,
            min_repeats: int) -> dict[str, list[float]]:
    """Each call ``warmup`` times untimed, then timed once per round in rotating order."""
    if not calls:
        return {}
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    limit = None if budget_s is None else budget_s * len(names)
    start = time.perf_counter()
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t)
        if limit is not None and r + 1 >= min_repeats and time.perf_counter() - start > limit:
            break
    return times


def first_rows(sample, n: int):
    """The first ``n`` samples of a tensor, a tuple of tensors or keyword inputs (a dict)."""
    if isinstance(sample, dict):
        return {k: v[:n] for k, v in sample.items()}
    if isinstance(sample, (tuple, list)):
        return tuple(x[:n] for x in sample)
    return sample[:n]


def batch_size(sample) -> int:
    if isinstance(sample, dict):
        return len(next(iter(sample.values())))
    return len(sample[0]) if isinstance(sample, (tuple, list)) else len(sample)


def torch_runner(model: nn.Module) -> Runner:
    """A PyTorch model's forward pass in inference mode, on a tensor, a tuple of positional
    inputs or a dict of keyword inputs (e.g. input_ids and attention_mask)."""
    model.eval()

    def prepare(inputs) -> Call:
        def call():
            with torch.inference_mode():
                if isinstance(inputs, dict):
                    return model(**inputs)
                return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
        return call
    return prepare


def measure(b1: dict[str, Call], large: dict[str, tuple[Call, int]] | None = None, *,
            threads: int = THREADS, repeats_b1: int = REPEATS_B1, repeats_large: int = REPEATS_LARGE,
            warmup: int = WARMUP, budget_s: float | None = BUDGET_S,
            min_repeats: int = MIN_REPEATS) -> dict[str, Timing]:
    """Timings of prepared calls: ``b1[name]`` runs one sample, ``large[name]`` is (a call on a
    large batch, its size); a variant absent from ``large`` gets no throughput (NaN)."""
    large = large or {}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t1 = _rounds(b1, repeats_b1, warmup, budget_s, min_repeats)
        tl = _rounds({k: c for k, (c, _) in large.items()}, repeats_large, 1, budget_s, min_repeats)
    finally:
        torch.set_num_threads(old_threads)
    return {k: Timing(1e3 * percentile(t1[k], 50), 1e3 * percentile(t1[k], 95),
                      large[k][1] / percentile(tl[k], 50) if k in large else float("nan"))
            for k in b1}


def time_variants(runners: dict[str, Runner], sample_b1, sample_large, **policy) -> dict[str, Timing]:
    """Batch-1 latency and large-batch throughput of each runner on the same inputs (tuples of
    positional inputs), measured interleaved under the policy above (``policy`` overrides it)."""
    b1 = {k: r(sample_b1) for k, r in runners.items()}
    n = batch_size(sample_large)
    big = {k: (r(sample_large), n) for k, r in runners.items()}
    return measure(b1, big, **policy)


def time_models(models: dict[str, nn.Module], samples: dict, large_batch: int, **policy) -> dict[str, Timing]:
    """Each model on its own inputs (``samples[name]``: its first row for latency, up to
    ``large_batch`` rows for throughput), measured interleaved as :func:`time_variants` does."""
    b1, big = {}, {}
    for name, model in models.items():
        run, sample = torch_runner(model), samples[name]
        b1[name] = run(first_rows(sample, 1))
        wide = first_rows(sample, large_batch)
        big[name] = (run(wide), batch_size(wide))
    return measure(b1, big, **policy)


def latency_ms(model: nn.Module, sample, repeats: int = REPEATS_B1, **policy) -> tuple[float, float]:
    """(median, p95) batch-1 latency of ``model`` on the first row of ``sample``, in ms."""
    t = measure({"model": torch_runner(model)(first_rows(sample, 1))}, repeats_b1=repeats, **policy)["model"]
    return t.latency_ms_b1_median, t.latency_ms_b1_p95
