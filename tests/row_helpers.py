"""Comparison rows for the evaluation and presentation tests."""

from kdistill.evaluate import ModelReport


def model_row(name, acc, params=100):
    return ModelReport(name=name, accuracy=acc, errors=int(round((1 - acc) * 100)), nll=0.1, ece=0.01,
                       agreement=None, kl_to_teacher=None, parameters=params, size_bytes=400,
                       latency_ms_b1=0.1)


# two seeds of a scratch and a distilled student
SEED_RUNS = [[model_row("scratch", 0.90), model_row("distilled", 0.93)],
             [model_row("scratch", 0.92), model_row("distilled", 0.95)]]
