"""Shared fixtures: small slices of the real bundled MNIST, loaded once per session."""

import pytest
import torch

from kdistill.config import RunConfig
from kdistill.data import DataSplits, Split, build_data


@pytest.fixture(scope="session")
def mnist() -> DataSplits:
    return build_data(RunConfig().data)


@pytest.fixture
def small_mnist(mnist) -> DataSplits:
    """512 train / 256 val / 256 test real MNIST images."""
    cut = lambda split, n: Split(split.inputs[:n].clone(), split.labels[:n].clone(), split.name)
    return DataSplits(cut(mnist.train, 512), cut(mnist.val, 256), cut(mnist.test, 256),
                      num_classes=10, input_shape=(1, 28, 28), identity="mnist-small")


def tiny_config(tmp_path, **over) -> RunConfig:
    raw = {
        "data": {"batch_size": 64, "eval_batch_size": 256},
        "student": {"arch": "mlp", "hidden": [32], "dropout": 0.1},
        "teacher": {"model": {"arch": "pretrained", "name": "ccexam-mnist"}},
        "loss": {"temperature": {"kind": "linear", "start": 8, "end": 2}, "soft_weight": 0.7, "hard_weight": 0.3},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "output_dir": str(tmp_path / "run"), "progress": False},
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.parse(raw)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pytest_configure(config):
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the thread
    # hand-offs cost far more than the arithmetic.
    torch.set_num_threads(1)
