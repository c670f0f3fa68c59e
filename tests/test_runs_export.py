"""`kdistill export RUN_DIR` for every task: an image classifier's, a text classifier's and a
causal LM's run leave as ONNX fp32 + int8 with parity checked (the LM's greedy generation from
ONNX too); its errors; the bundled teacher."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from kdistill.config import RunConfig  # noqa: E402
from kdistill.runs import distill, train  # noqa: E402


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


def _exported(run_dir, monkeypatch, capsys) -> dict:
    code, out = _cli(monkeypatch, capsys, "export", run_dir, "--quantize", "int8", "--repeats", "3")
    assert code == 0, out
    report = json.loads((run_dir / "export.json").read_text())
    assert report["model"] == "distilled" and set(report["artifacts"]) == {"onnx_fp32", "onnx_int8"}
    for artifact in report["artifacts"].values():
        assert (run_dir / artifact["path"]).is_file()  # paths relative to export.json
    assert "parity onnx_fp32" in out
    return report


def test_text_run_exports_with_parity(tmp_path, monkeypatch, capsys):
    from text_helpers import text_config

    cfg = RunConfig.parse(text_config(tmp_path, n=48, epochs=1))
    train(cfg, role="teacher")
    distill(cfg)
    report = _exported(tmp_path / "run", monkeypatch, capsys)
    assert report["parity"]["onnx_fp32"]["top1_agreement"] == 1.0
    rows = {r["name"] for r in report["rows"]}
    assert {"distilled", "distilled onnx fp32", "distilled onnx int8"} <= rows


def test_lm_run_exports_with_greedy_generation_parity(tmp_path, monkeypatch, capsys):
    from lm_helpers import tiny_lm_config

    cfg = RunConfig.parse(tiny_lm_config(tmp_path, train={"epochs": 1, "progress": False, "max_steps": 3,
                                                          "output_dir": str(tmp_path / "run")}))
    distill(cfg)
    report = _exported(tmp_path / "run", monkeypatch, capsys)
    assert report["parity"]["onnx_fp32"]["passed"] and report["parity"]["onnx_fp32"]["samples"] >= 2
    generation = report["generation"]  # greedy continuations of held-out prompts, ONNX vs PyTorch
    assert generation["prompts"] == 2 and generation["onnx_fp32"]["same_tokens"] == 1.0
    assert "onnx_int8" in generation


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run directory: the bundled MNIST teacher distilled into a small MLP, 512 samples."""
    pytest.importorskip("mnist")
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(data={"dataset": "mnist", "limit_train": 512}, student={"arch": "mlp", "hidden": [32]},
                    teacher={"model": {"arch": "pretrained"}},
                    train={"epochs": 1, "output_dir": str(out), "progress": False})
    distill(cfg)
    return out


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
    assert code == 2 and "has no 'scratch' model" in out and "it has: distilled (choose with --role)" in out
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
