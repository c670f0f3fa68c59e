"""The one timing harness: repeats and budget, percentiles, and evaluation and export timing a
model the same way (same calls, same numbers) under a fake clock."""

import time

import numpy as np
import pytest
import torch
from torch import nn

from kdistill import timing
from kdistill.evaluate import compare
from kdistill.export.parity import variant_timings
from kdistill.tasks import ClassificationTask


def test_time_calls_repeats_and_budget():
    calls = []
    times = timing.time_calls(lambda: calls.append(1), repeats=7, warmup=2)
    assert len(times) == 7 and len(calls) == 9
    slow = timing.time_calls(lambda: time.sleep(0.01), repeats=100, warmup=0, budget_s=0.0, min_repeats=3)
    assert len(slow) == 3 and min(slow) >= 0.009


def test_percentile_is_linear_interpolation():
    values = [0.3, 0.1, 0.7, 0.2, 0.9]
    for q in (0, 50, 95, 100):
        assert timing.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-15)


class _Clock:
    """perf_counter for the harness: only a forward pass moves it (1 ms per sample)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Timed(nn.Module):
    def __init__(self, clock: _Clock, classes: int = 3):
        super().__init__()
        self.clock, self.linear, self.calls = clock, nn.Linear(4, classes), []

    def forward(self, x):
        self.calls.append(len(x))
        self.clock.now += 1e-3 * len(x)
        return self.linear(x)


def test_evaluation_and_export_time_a_model_the_same_way(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    x = torch.randn(8, 4)
    model = _Timed(clock)
    batches = [{"inputs": x, "labels": torch.zeros(8, dtype=torch.long)}]
    (row,) = compare({"m": model}, ClassificationTask(3), batches, teacher=None, timing_sample=x,
                     throughput_batch=8, latency_repeats=20, throughput_repeats=4)
    evaluation_calls = model.calls[1:]  # the first is the evaluation's own prediction
    model.calls, clock.now = [], 8e-3  # where the timing began: after that prediction
    exported = variant_timings({"m": model}, {}, x, large_batch=8, repeats_b1=20, repeats_large=4)["m"]
    assert model.calls == evaluation_calls == [1] * (timing.WARMUP + 20) + [8] * (1 + 4)
    assert (row.latency_ms_b1, row.latency_ms_b1_p95, row.throughput_per_s) == (
        exported.latency_ms_b1_median, exported.latency_ms_b1_p95, exported.throughput_per_s)
    assert exported.latency_ms_b1_median == pytest.approx(1.0)
    assert exported.throughput_per_s == pytest.approx(1000.0)


def test_threads_are_pinned_and_restored(monkeypatch):
    seen = []
    before = torch.get_num_threads()
    timing.measure({"f": lambda: seen.append(torch.get_num_threads())}, repeats_b1=3, warmup=0, threads=1)
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
