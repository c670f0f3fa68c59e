"""ONNX export, parity, int8 quantization, the unsupported-operator error and the CLI."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from kdistill import export as ex  # noqa: E402
from kdistill.errors import ExportError  # noqa: E402
from kdistill.models import CNN, MLP  # noqa: E402


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_mlp_export_parity_and_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = MLP(784, [32], 10)
    x, y = _images()
    report = ex.export_model(model, tmp_path, inputs=x, labels=y, quantize=None, timing=False)
    p = report["parity"]["onnx_fp32"]
    assert p["passed"] and p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0
    assert p["accuracy_delta_points"] == 0.0 and p["samples"] == 64
    session = ex.ort_session(tmp_path / "student.onnx")
    assert session.get_inputs()[0].shape == ["batch", 1, 28, 28]
    assert b"stack_trace" not in (tmp_path / "student.onnx").read_bytes()  # debug records stripped
    for n in (1, 37):  # any batch size runs, including the size-1 case torch.export specialises
        got = ex.onnx_logits(session, x[:n])
        assert got.shape == (n, 10)
        torch.testing.assert_close(got, model(x[:n]).detach(), atol=1e-5, rtol=1e-5)
    assert report["rows"][0]["latency_ms_b1_median"] is None  # timing off


def test_cnn_int8_torch_export_and_timing(tmp_path):
    torch.manual_seed(0)
    student = CNN((1, 28, 28), [4, 8], 64, 10)
    teacher = CNN((1, 28, 28), [8, 16], 64, 10)
    x, y = _images(128)
    report = ex.export_model(student, tmp_path / "out", inputs=x, labels=y, teacher=teacher,
                             quantize="int8", torch_export=True, large_batch=32, repeats_b1=5,
                             repeats_large=2, report_path=tmp_path / "export.json")
    assert json.loads((tmp_path / "export.json").read_text()) == report
    arts = report["artifacts"]
    assert arts["onnx_fp32"]["path"] == "out/student.onnx"
    assert arts["onnx_int8"]["bytes"] < arts["onnx_fp32"]["bytes"] / 2
    assert report["parity"]["torch_export"]["max_abs_diff"] < 1e-5
    int8 = report["parity"]["onnx_int8"]
    assert int8["tolerance"] is None and int8["passed"] and int8["top1_agreement"] > 0.8
    assert [r["name"] for r in report["rows"]] == ["teacher", "student", "student onnx fp32",
                                                   "student onnx int8"]
    for row in report["rows"]:
        assert row["latency_ms_b1_p95"] >= row["latency_ms_b1_median"] > 0
        assert row["throughput_per_s"] > 0 and 0 <= row["accuracy"] <= 1
    assert "student onnx int8" in ex.format_rows(report)


def test_fp32_mismatch_is_an_error(tmp_path, monkeypatch):
    real = ex.onnx_logits
    monkeypatch.setattr(ex, "onnx_logits", lambda s, x, batch_size=512: real(s, x) + 0.1)
    x, y = _images(16)
    with pytest.raises(ExportError, match="not faithful: max .logit difference. 0.1"):
        ex.export_model(MLP(784, [8], 10), tmp_path, inputs=x, labels=y, quantize=None, timing=False)
    assert not (tmp_path / "student.onnx").exists()  # a wrong model is not left behind


def test_int8_guard_fails_on_accuracy_loss(tmp_path):
    x, y = _images(16)
    with pytest.raises(ExportError, match="int8 quantization cost student"):
        # a negative allowance demands a gain no quantized model makes: the guard must trip
        ex.export_model(MLP(784, [8], 10), tmp_path, inputs=x, labels=y, quantize="int8",
                        timing=False, int8_max_drop_points=-50)
    assert (tmp_path / "student.onnx").is_file() and not (tmp_path / "student.int8.onnx").exists()


def test_causal_lm_dynamic_batch_and_sequence(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 96, (8, 12))
    report = ex.export_model(lm, tmp_path, inputs=ids, name="lm", quantize="int8", timing=False)
    assert report["parity"]["onnx_fp32"]["passed"]
    assert report["parity"]["onnx_int8"]["accuracy_torch"] is None  # no labels: agreement only
    session = ex.ort_session(tmp_path / "lm.onnx")
    assert session.get_inputs()[0].shape == ["batch", "sequence"]
    assert session.get_outputs()[0].shape == ["batch", "sequence", 96]
    other = torch.randint(0, 96, (3, 5))
    with torch.no_grad():
        want = lm(input_ids=other, use_cache=False).logits
    torch.testing.assert_close(ex.onnx_logits(session, other), want, atol=1e-4, rtol=1e-4)
    prompt, expected = other[:2, :4], other[:2, :4]
    with torch.no_grad():  # greedy decoding in PyTorch, one token at a time
        for _ in range(5):
            step = lm(input_ids=expected, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, step], 1)
    assert torch.equal(ex.onnx_generate(session, prompt, 5), expected)


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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run directory: the bundled MNIST teacher distilled into a small MLP, 512 samples."""
    pytest.importorskip("mnist")
    from kdistill.config import RunConfig
    from kdistill.runs import distill

    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(data={"dataset": "mnist", "limit_train": 512}, student={"arch": "mlp", "hidden": [32]},
                    teacher={"model": {"arch": "pretrained"}},
                    train={"epochs": 1, "output_dir": str(out), "progress": False})
    distill(cfg)
    return out


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from kdistill import cli

    monkeypatch.setattr(sys, "argv", ["kdistill", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_export_run_dir(tiny_run, monkeypatch, capsys):
    code, out = _cli(monkeypatch, capsys, "export", tiny_run, "--format", "onnx", "--quantize", "int8",
                     "--torch-export", "--repeats", "5", "--samples", "2000")
    assert code == 0, out
    report = json.loads((tiny_run / "export.json").read_text())
    assert report["model"] == "distilled"
    assert set(report["artifacts"]) == {"onnx_fp32", "onnx_int8", "torch_export"}
    assert (tiny_run / report["artifacts"]["onnx_int8"]["path"]).is_file()
    assert report["parity"]["onnx_fp32"]["samples"] == 2000  # the first 2000 test images
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"teacher", "distilled", "distilled onnx fp32", "distilled onnx int8"}
    assert rows["teacher"]["accuracy"] > 0.98  # the bundled CNN
    assert abs(rows["distilled onnx int8"]["accuracy"] - rows["distilled"]["accuracy"]) < 0.02
    assert "distilled onnx int8" in out and "parity onnx_fp32" in out


def test_cli_export_errors(tiny_run, tmp_path, monkeypatch, capsys):
    code, out = _cli(monkeypatch, capsys, "export", tiny_run, "--format", "tflite")
    assert code == 2 and "--format 'tflite' is not supported" in out
    code, out = _cli(monkeypatch, capsys, "export", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in out
    code, out = _cli(monkeypatch, capsys, "export", tiny_run, "--role", "scratch")
    assert code == 2 and "has no trained 'scratch' model" in out and "it has: distilled (choose with --role)" in out
    code, out = _cli(monkeypatch, capsys, "export", tmp_path)
    assert code == 2 and "holds no run" in out


def test_cli_export_bundled_teacher(tiny_run, monkeypatch, capsys):
    """The bundled teacher has no folder in the run: the config comes from another role's."""
    code, out = _cli(monkeypatch, capsys, "export", tiny_run, "--role", "teacher", "--samples", "300",
                     "--repeats", "2")
    assert code == 0, out
    report = json.loads((tiny_run / "export.json").read_text())
    assert report["model"] == "teacher" and report["parity"]["onnx_fp32"]["passed"]
    assert [r["name"] for r in report["rows"]] == ["teacher", "teacher onnx fp32"]
