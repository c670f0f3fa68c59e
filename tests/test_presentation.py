"""The comparison's presentation for causal-LM rows: perplexity columns and a perplexity verdict
(the classifier table and verdict are tested in test_evaluate.py)."""

import pytest

from kdistill.evaluate import LMReport, aggregate_rows
from kdistill.presentation import format_table, table_cells, verdict


def _lm(name, ppl, agreement=None):
    return LMReport(name=name, ppl=ppl, nll=0.0, agreement=agreement, kl_to_teacher=None, parameters=10,
                    size_bytes=2_000_000, tokens_per_s=1234.0)


def test_lm_rows_get_the_perplexity_table():
    headers, cells = table_cells([_lm("teacher", 10.0, 1.0), _lm("scratch", 30.0, 0.4)])
    assert headers == ["model", "held-out ppl", "NLL", "agree w/ teacher", "params", "size", "tokens/s"]
    assert cells[1] == ["scratch", "30.00", "0.0000", "40.00%", "10", "2.000 MB", "1,234/s"]


@pytest.mark.parametrize("distilled, held, words", [
    (20.0, True, "closes 50% of the scratch-to-teacher gap"),
    (9.0, True, "matches or beats it"),
    (35.0, False, "closes none of the scratch-to-teacher gap"),
])
def test_lm_verdict_judges_perplexity_lower_is_better(distilled, held, words):
    rows = [_lm("teacher", 10.0), _lm("scratch", 30.0), _lm("distilled", distilled)]
    got, text = verdict(rows)
    assert got is held and words in text and "held-out perplexity" in text
    assert ("distillation paid" in text) is held
    assert words in " ".join(format_table(rows, "t").split())  # the CLI prints the same verdict


def test_lm_verdict_over_seeds_weighs_the_spread():
    runs = [[_lm("scratch", 30.0), _lm("distilled", 20.0)], [_lm("scratch", 32.0), _lm("distilled", 22.0)]]
    agg = aggregate_rows(runs)
    assert agg[1]["ppl"]["mean"] == pytest.approx(21.0)
    assert table_cells(agg)[1][1][1] == "21.00 ± 1.41"
    held, text = verdict(agg)
    assert held and "larger than the two seed spreads" in text
    close = aggregate_rows([[_lm("scratch", 30.0), _lm("distilled", 29.0)],
                            [_lm("scratch", 26.0), _lm("distilled", 27.0)]])
    assert "within the seed spread" in verdict(close)[1]
