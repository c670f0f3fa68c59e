import pickle

import pytest
import torch

from kdistill.config import CNNSpec, MLPSpec, PretrainedSpec
from kdistill.errors import ModelError
from kdistill.models import build_model, count_parameters, load_weights


def test_families_have_expected_sizes():
    assert count_parameters(build_model(MLPSpec(hidden=[800, 800]), (1, 28, 28), 10)) == 784 * 800 + 800 + 800 * 800 + 800 + 8010
    cnn = build_model(CNNSpec(channels=[8, 16], hidden=32), (1, 28, 28), 10)
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_bundled_teacher_is_accurate(mnist):
    model = build_model(PretrainedSpec(), (1, 28, 28), 10).eval()
    with torch.no_grad():
        pred = model(mnist.test.inputs[:2000]).argmax(-1)
    assert (pred == mnist.test.labels[:2000]).float().mean() > 0.98


def test_pretrained_refuses_other_shapes():
    with pytest.raises(ModelError, match="1x28x28"):
        build_model(PretrainedSpec(), (3, 32, 32), 10)


def test_weights_round_trip_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    m = build_model(MLPSpec(hidden=[16]), (4,), 3)
    save_file(m.state_dict(), tmp_path / "w.safetensors")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        other = build_model(MLPSpec(hidden=[16], weights=tmp_path / name), (4,), 3)
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), other.state_dict().values()))
    with pytest.raises(ModelError, match="do not fit"):
        build_model(MLPSpec(hidden=[8], weights=tmp_path / "w.pt"), (4,), 3)
    with pytest.raises(ModelError, match="does not exist"):
        load_weights(m, tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned-marker",))


def test_pickled_code_in_a_weights_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    with pytest.raises(ModelError, match="weights_only"):
        load_weights(build_model(MLPSpec(hidden=[4]), (4,), 3), tmp_path / "evil.pt")
    assert not (tmp_path / "pwned-marker").exists()
