"""Metric functions against hand-computed values; the comparison and its summaries."""

import math
import time

import pytest
import torch
from torch import nn

from kdistill.evaluate import (
    ModelReport, aggregate_rows, agreement, compare, ece_from_curve, entropy_sum,
    expected_calibration_error, kl_to, nll, per_class_accuracy, reliability_curve, time_calls, top_k_accuracy,
)
from kdistill.presentation import format_cell, format_table, table_cells, verdict
from kdistill.tasks import ClassificationTask


def test_ece_by_hand():
    # conf 0.9 right and 0.91 wrong share bin (0.8667, 0.9333]: accuracy 0.5, confidence 0.905;
    # 0.95 wrong, 0.7 right, 0.58 wrong sit alone in their bins.
    probs = torch.tensor([[0.9, 0.1], [0.09, 0.91], [0.95, 0.05], [0.3, 0.7], [0.58, 0.42]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1])
    expected = (2 * abs(0.905 - 0.5) + 0.95 + abs(0.7 - 1) + 0.58) / 5  # = 0.528
    assert expected_calibration_error(probs, labels) == pytest.approx(0.528, abs=1e-12)
    curve = reliability_curve(probs, labels)
    assert len(curve) == 15 and sum(b["count"] for b in curve) == 5
    full = [b for b in curve if b["count"]]
    assert [b["count"] for b in full] == [1, 1, 2, 1]
    assert full[2]["confidence"] == pytest.approx(0.905) and full[2]["accuracy"] == 0.5
    assert curve[0]["lower"] == 0 and curve[-1]["upper"] == 1
    assert ece_from_curve(curve) == pytest.approx(expected)


def test_ece_perfectly_calibrated_and_bins_edges():
    # confidence 1.0 and right: zero gap, in the last bin; confidence 0.5 in bin (0.4667, 0.5333]
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    labels = torch.tensor([0, 0, 1])
    curve = reliability_curve(probs, labels)
    assert curve[-1]["count"] == 1 and curve[7]["count"] == 2
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_agreement_by_hand():
    a = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    assert agreement(a, b) == 0.5


def test_kl_by_hand():
    ref = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float64).log()
    model = torch.tensor([[0.25, 0.75], [0.25, 0.75]], dtype=torch.float64).log()
    # row 1: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3); row 2: identical, 0
    assert kl_to(ref, model) == pytest.approx(0.25 * math.log(4 / 3), abs=1e-12)
    assert kl_to(ref, ref + 7.0) == pytest.approx(0.0, abs=1e-12)  # logits shift-invariant


def test_nll_by_hand():
    logits = torch.tensor([[0.5, 0.5], [0.75, 0.25]], dtype=torch.float64).log()
    labels = torch.tensor([0, 1])
    assert nll(logits, labels) == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-12)


def test_top5_and_per_class_by_hand():
    logits = torch.arange(12.0).repeat(3, 1)  # class 11 highest, then 10, ... 7 fifth
    labels = torch.tensor([11, 7, 6])
    assert top_k_accuracy(logits, labels, 5) == pytest.approx(2 / 3)
    assert per_class_accuracy(logits, labels, 12)[11] == 1.0
    assert per_class_accuracy(logits, labels, 12)[7] == 0.0
    assert per_class_accuracy(logits, labels, 12)[0] is None


def test_entropy_sum_by_hand():
    uniform = torch.zeros(3, 4)
    assert entropy_sum(uniform).item() == pytest.approx(3 * math.log(4), rel=1e-6)
    sharp = torch.tensor([[0.0, 100.0]])
    assert entropy_sum(sharp).item() < 1e-6
    assert entropy_sum(sharp, temperature=1e6).item() == pytest.approx(math.log(2), rel=1e-4)


class _Split:
    def __init__(self, n, classes, dim=6):
        g = torch.Generator().manual_seed(0)
        self.batches = [{"inputs": torch.randn(n, dim, generator=g),
                         "labels": torch.randint(0, classes, (n,), generator=g)}]

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("classes", [10, 12])
def test_compare_fields(classes):
    torch.manual_seed(0)
    data = _Split(64, classes)
    models = {"teacher": nn.Linear(6, classes), "distilled": nn.Linear(6, classes)}
    rows = compare(models, ClassificationTask(classes), data, timing_sample=data.batches[0]["inputs"],
                   latency_repeats=5, throughput_repeats=2)
    t, d = rows
    assert t.agreement == 1.0 and t.kl_to_teacher == pytest.approx(0.0, abs=1e-12)
    assert (t.top5_accuracy is None) == (classes <= 10)
    assert d.parameters == 6 * classes + classes and d.size_bytes > 4 * d.parameters
    assert 0 < d.latency_ms_b1 <= d.latency_ms_b1_p95 and d.throughput_per_s > 0
    assert d.throughput_batch == 64 and d.samples == 64 and len(d.per_class_accuracy) == classes
    assert d.ece == pytest.approx(ece_from_curve(d.reliability))
    assert d.errors == round((1 - d.accuracy) * 64)


def _row(name, acc, params=100):
    return ModelReport(name=name, accuracy=acc, errors=int(round((1 - acc) * 100)), nll=0.1, ece=0.01,
                       agreement=None, kl_to_teacher=None, parameters=params, size_bytes=400,
                       latency_ms_b1=0.1)


def test_aggregate_mean_std_and_table():
    runs = [[_row("scratch", 0.90), _row("distilled", 0.93)], [_row("scratch", 0.92), _row("distilled", 0.95)]]
    agg = aggregate_rows(runs)
    assert [r["name"] for r in agg] == ["scratch", "distilled"]
    assert agg[0]["accuracy"]["mean"] == pytest.approx(0.91)
    assert agg[0]["accuracy"]["std"] == pytest.approx(math.sqrt(2) * 0.01)  # sample std, ddof=1
    assert agg[0]["agreement"] is None and agg[0]["parameters"]["std"] == 0
    headers, cells = table_cells(agg)
    assert "agree w/ teacher" not in headers  # empty for every model
    assert cells[0][headers.index("accuracy")] == "91.00 ± 1.41%"
    assert cells[0][headers.index("params")] == "100"  # constant over seeds: no ±
    held, text = verdict(agg)
    assert held and "+3.00 points" in text and "larger than the two seed spreads" in text


def test_format_cell_and_verdict_single_run():
    assert format_cell("pct", 0.98765) == "98.77%"
    assert format_cell("pct", None) == "-" and format_cell("ms", math.nan) == "-"
    assert format_cell("mb", 1_500_000) == "1.500 MB"
    rows = [_row("teacher", 0.99, 1000), _row("scratch", 0.95), _row("distilled", 0.97)]
    held, text = verdict(rows)
    assert held and "closes 50% of the scratch-to-teacher gap" in text and "10.0x fewer" in text
    assert verdict(rows[:2])[0] is None
    assert "distilled" in format_table(rows, "t") and "closes 50%" in format_table(rows, "t")
    assert "closes" not in format_table(rows, "t", with_verdict=False)
    held, text = verdict([_row("scratch", 0.97), _row("distilled", 0.95)])
    assert held is False and "did not pay" in text and "closes none" not in text
    held, text = verdict([_row("teacher", 0.99), _row("scratch", 0.97), _row("distilled", 0.95)])
    assert held is False and "closes none of the scratch-to-teacher gap" in text


def test_time_calls_repeats_and_budget():
    calls = []
    times = time_calls(lambda: calls.append(1), repeats=7, warmup=2)
    assert len(times) == 7 and len(calls) == 9
    slow = time_calls(lambda: time.sleep(0.01), repeats=100, warmup=0, budget_s=0.0, min_repeats=3)
    assert len(slow) == 3 and min(slow) >= 0.009


def test_entropy_sum_estimate_on_many_rows_is_close_and_exact_below_the_cap():
    import torch

    from kdistill.evaluate import entropy_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 50, generator=g, dtype=torch.float64)
    exact = entropy_sum(logits, 2.0)
    assert entropy_sum(logits[:100], 2.0, max_elements=256 * 50) == entropy_sum(logits[:100], 2.0)
    assert abs(entropy_sum(logits, 2.0, max_elements=256 * 50) - exact) / exact < 0.02
