"""ONNX export errors: an operator without a translation is named; an uncapturable model says why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from kdistill import export as ex  # noqa: E402
from kdistill.errors import ExportError  # noqa: E402


@torch.library.custom_op("kdistill_test::wiggle", mutates_args=())
def wiggle(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * 2


@wiggle.register_fake
def _(x):
    return torch.empty_like(x)


class Wiggly(nn.Module):
    """Uses a custom operator that torch.export captures but no ONNX translation exists for."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(wiggle(x))


def test_unsupported_operator_is_named(tmp_path):
    with pytest.raises(ExportError, match=r"operator `kdistill_test.wiggle.default` has no ONNX "
                                          r"translation") as err:
        ex.export_onnx(Wiggly().eval(), torch.randn(2, 4), tmp_path / "w.onnx")
    assert "\n" not in str(err.value)


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_uncapturable_model_says_why(tmp_path):
    with pytest.raises(ExportError, match="data-dependent expression"):
        ex.export_onnx(DataDependent(), torch.rand(3, 4), tmp_path / "d.onnx")
