"""precision: auto picks bf16 only where it is native; forcing emulated bf16 warns once."""

import contextlib

import pytest
import torch

from kdistill import precision
from kdistill.config import RunConfig
from kdistill.teachers import LiveTeacher

WITHOUT = frozenset({"fpu", "sse2", "avx2", "avx512f"})  # the 2-core CPU of the issue
WITH_AVX512_BF16 = WITHOUT | {"avx512_bf16"}
WITH_AMX = WITHOUT | {"amx_bf16", "amx_tile"}


@pytest.fixture
def cpu(monkeypatch):
    """Fake the CPU's flags; forget earlier warnings."""
    monkeypatch.setattr(precision, "_warned", set())

    def fake(flags):
        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    return fake


def test_auto_is_fp32_on_a_cpu_that_emulates_bf16(cpu, capsys):
    cpu(WITHOUT)
    name, reason = precision.resolve_precision("auto", "cpu")
    assert name == "fp32" and "no AVX512-BF16 / AMX" in reason
    assert isinstance(precision.autocast("auto", torch.device("cpu")), contextlib.nullcontext)
    assert capsys.readouterr().err == ""  # auto never warns: it chose fp32


@pytest.mark.parametrize("flags, found", [(WITH_AVX512_BF16, "avx512_bf16"), (WITH_AMX, "amx_bf16")])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu, flags, found):
    cpu(flags)
    name, reason = precision.resolve_precision("auto", "cpu")
    assert name == "bf16" and found in reason
    with precision.autocast("auto", torch.device("cpu")):
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16


def test_forced_bf16_on_an_emulating_cpu_warns_in_one_line_once(cpu, capsys):
    cpu(WITHOUT)
    assert precision.resolve_precision("bf16", "cpu") == ("bf16", "asked for; emulated: this CPU has no "
                                                          "AVX512-BF16 / AMX (bf16 would be emulated)")
    precision.resolve_precision("bf16", "cpu")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set precision: auto" in err
    cpu(WITH_AVX512_BF16)
    precision.resolve_precision("bf16", "cpu")
    assert capsys.readouterr().err == ""


def test_auto_on_cuda_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "FakeGPU")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        assert precision.resolve_precision("auto", "cuda")[0] == want


def test_other_devices_and_explicit_choices():
    assert precision.resolve_precision("auto", "meta")[0] == "fp32"
    assert precision.resolve_precision("fp16", "cpu") == ("fp16", "asked for")
    with pytest.raises(ValueError, match="precision must be"):
        precision.resolve_precision("int8", "cpu")


def test_the_run_log_records_train_and_teacher_precision(cpu):
    cpu(WITHOUT)
    cfg = RunConfig.parse({"teacher": {"model": {"arch": "mlp", "hidden": [4]}, "precision": "auto"},
                           "train": {"precision": "auto"}})
    record = precision.precision_record(cfg)
    assert record["train"]["dtype"] == "fp32" and record["teacher"]["dtype"] == "fp32"
    assert "AVX512-BF16" in record["train"]["reason"]
    cpu(WITH_AMX)
    teacher = LiveTeacher(torch.nn.Linear(3, 2), num_outputs=2, precision="auto")
    assert teacher.dtype == torch.bfloat16 and teacher.describe()["precision"] == "bf16"
    assert "amx_bf16" in teacher.describe()["precision_reason"]


def test_this_machines_flags_are_read():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # a Linux machine: the probe found real flags
        assert any(f.startswith(("sse", "fp", "asimd", "avx")) for f in flags)
