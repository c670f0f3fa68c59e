"""The comparison table and verdict for classifier and causal-LM rows, single runs and seeds."""

import math

from kdistill.evaluate import aggregate_rows
from kdistill.present import format_cell, format_export_rows, format_table, table_cells, verdict
from row_helpers import SEED_RUNS, model_row


def test_seed_table_and_verdict():
    agg = aggregate_rows(SEED_RUNS)
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
    rows = [model_row("teacher", 0.99, 1000), model_row("scratch", 0.95), model_row("distilled", 0.97)]
    held, text = verdict(rows)
    assert held and "closes 50% of the scratch-to-teacher gap" in text and "10.0x fewer" in text
    assert verdict(rows[:2])[0] is None
    assert "distilled" in format_table(rows, "t") and "closes 50%" in format_table(rows, "t")
    assert "closes" not in format_table(rows, "t", with_verdict=False)
    held, text = verdict([model_row("scratch", 0.97), model_row("distilled", 0.95)])
    assert held is False and "did not pay" in text and "closes none" not in text
    held, text = verdict([model_row("teacher", 0.99), model_row("scratch", 0.97), model_row("distilled", 0.95)])
    assert held is False and "closes none of the scratch-to-teacher gap" in text




def _lm(name, ppl, agree, params, **extra):
    return {"model": name, "parameters": params, "nll": math.log(ppl), "ppl": ppl, "tokens": 512,
            "agreement": agree, "kl_to_teacher": 0.5, **extra}


def test_lm_rows_get_their_own_columns_and_verdict():
    rows = [_lm("teacher", 20.0, 1.0, 1000), _lm("scratch", 80.0, 0.30, 100), _lm("distilled", 60.0, 0.42, 100)]
    headers, cells = table_cells(rows)
    assert headers == ["model", "held-out ppl", "NLL", "agree w/ teacher", "KL to teacher", "params", "tokens"]
    assert cells[2][:2] == ["distilled", "60.00"] and cells[2][3] == "42.00%"
    held, text = verdict(rows)
    assert held and "60.00 against 80.00" in text and "42.00% of held-out tokens against 30.00%" in text
    assert "teacher's perplexity is 20.00 with 10.0x fewer parameters" in text
    held, _ = verdict([_lm("scratch", 50.0, 0.3, 100), _lm("distilled", 60.0, 0.4, 100)])
    assert held is False
    seeds = [[_lm("scratch", 80.0, 0.3, 100), _lm("distilled", 60.0, 0.4, 100)],
             [_lm("scratch", 82.0, 0.3, 100), _lm("distilled", 61.0, 0.4, 100)]]
    agg = [{"name": n, "ppl": {"mean": sum(r[i]["ppl"] for r in seeds) / 2, "std": 1.0}}
           for i, n in enumerate(("scratch", "distilled"))]
    held, text = verdict(agg)
    assert held and "larger than the two seed spreads" in text
    with_em = rows[:2] + [_lm("distilled", 60.0, 0.42, 100, exact_match=0.25, tokens_per_s=1234.0)]
    headers, cells = table_cells(with_em)
    assert "exact match" in headers and cells[2][headers.index("exact match")] == "25.00%"
    assert cells[0][headers.index("tokens/s")] == "-" and cells[2][headers.index("tokens/s")] == "1,234/s"
    assert "distillation paid" in format_table(rows, "lm")


def test_export_rows_table():
    report = {"model": "distilled", "timing": {"batch_size_large": 256},
              "rows": [{"name": "distilled", "runtime": "pytorch", "precision": "fp32", "size_bytes": 4000,
                        "accuracy": 0.9, "latency_ms_b1_median": 0.5, "latency_ms_b1_p95": 0.7,
                        "throughput_per_s": 9000.0}],
              "parity": {"onnx_fp32": {"max_abs_diff": 1e-6, "top1_agreement": 1.0, "accuracy_delta_points": 0.0}}}
    text = format_export_rows(report)
    assert "throughput b256" in text and "0.500 ms" in text and "9,000/s" in text
    assert "parity onnx_fp32: max |logit diff| 1.00e-06, top-1 agreement 100.00%, accuracy delta +0.00 points" in text
