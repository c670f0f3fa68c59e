"""The live teacher: inference mode, lower precision, torch.compile, logits on the student's device."""

import pytest
import torch

from kdistill.models import MLP
from kdistill.teachers import LiveTeacher
from kdistill.teachers.live import weights_hash


def _model():
    torch.manual_seed(0)
    return MLP(20, [32], 5)


def _batch():
    return {"inputs": torch.randn(8, 20, generator=torch.Generator().manual_seed(1))}


def test_fp32_logits_without_autograd():
    model = _model()
    teacher = LiveTeacher(model, num_outputs=5)
    out = teacher.logits(_batch())
    torch.testing.assert_close(out, model(_batch()["inputs"]).detach())
    assert out.dtype == torch.float32 and not out.requires_grad and not model.training
    assert not out.is_inference()  # usable by autograd-tracked code downstream


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_is_close_and_returns_fp32(precision):
    reference = _model()(_batch()["inputs"]).detach()
    teacher = LiveTeacher(_model(), num_outputs=5, precision=precision)
    out = teacher.logits(_batch())
    assert out.dtype == torch.float32
    assert next(teacher.model.parameters()).dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)
    assert teacher.describe()["precision"] == precision


def test_identity_is_the_weights_hash():
    assert weights_hash(_model()) == weights_hash(_model())
    other = _model()
    with torch.no_grad():
        other.net[1].bias[0] += 1
    assert weights_hash(other) != weights_hash(_model())


@pytest.mark.slow
def test_compiled_matches_eager():
    eager = LiveTeacher(_model(), num_outputs=5).logits(_batch())
    compiled = LiveTeacher(_model(), num_outputs=5, compile=True)
    torch.testing.assert_close(compiled.logits(_batch()), eager, rtol=1e-5, atol=1e-5)


def test_output_adapters_find_the_logits():
    """Tensors, tuples, HF-style objects with .logits and dicts all give the logits tensor."""
    from types import SimpleNamespace

    import pytest as _pytest

    from kdistill.errors import ModelError
    from kdistill.teachers import to_logits

    z = torch.randn(2, 3)
    for wrapped in (z, (z, "aux"), [z], SimpleNamespace(logits=z), {"logits": z}):
        assert to_logits(wrapped) is z
    with _pytest.raises(ModelError, match="cannot find logits"):
        to_logits("not a model output")
