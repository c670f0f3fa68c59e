"""`kdistill export RUN_DIR` for every task: a text classifier's run and a causal LM's run leave
as ONNX fp32 + int8 with parity checked (the LM's greedy generation from ONNX too)."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("onnxruntime")

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
    import torch
    from lm_helpers import tiny_llama, word_tokenizer

    from kdistill.models.hf import save_hf

    teacher = save_hf(tiny_llama(vocab=56, seed=3), word_tokenizer(50), tmp_path / "teacher")
    text = tmp_path / "text.txt"
    g = torch.Generator().manual_seed(0)
    text.write_text(" ".join(f"w{int(i)}" for i in torch.randint(3, 50, (600,), generator=g)))
    cfg = RunConfig.parse({
        "task": "causal_lm", "data": {"dataset": "text_files", "path": str(text), "seq_len": 16},
        "teacher": {"kind": "live", "model": {"arch": "hf_causal_lm", "source": str(teacher)}},
        "student": {"arch": "hf_causal_lm", "config": {
            "model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}},
        "train": {"epochs": 1, "progress": False, "output_dir": str(tmp_path / "run"), "max_steps": 3}})
    distill(cfg)
    report = _exported(tmp_path / "run", monkeypatch, capsys)
    assert report["parity"]["onnx_fp32"]["passed"] and report["parity"]["onnx_fp32"]["samples"] >= 2
    generation = report["generation"]  # greedy continuations of held-out prompts, ONNX vs PyTorch
    assert generation["prompts"] == 2 and generation["onnx_fp32"]["same_tokens"] == 1.0
    assert "onnx_int8" in generation
