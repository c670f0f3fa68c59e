"""Parity of an export with PyTorch, and the whole export of a model: files, parity, timings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from kdistill.errors import ExportError
from kdistill.evaluate import model_bytes
from kdistill.export.onnx import (LogitsOnly, as_tuple, export_onnx, library_versions, onnx_bytes, onnx_logits,
                                  onnx_runner, ort_session, quantize_int8, quiet, torch_logits)
from kdistill.timing import REPEATS_B1, REPEATS_LARGE, THREADS, Timing, time_variants, torch_runner

@dataclass
class Parity:
    """PyTorch vs an exported model on the same held-out samples."""

    variant: str
    samples: int
    max_abs_diff: float
    top1_agreement: float           # fraction of positions with the same argmax
    accuracy_torch: float | None    # fractions; None without labels
    accuracy_exported: float | None
    accuracy_delta_points: float | None  # exported - torch, in percentage points
    tolerance: float | None         # max_abs_diff allowed (fp32 only)
    passed: bool


def compare_logits(variant: str, reference: torch.Tensor, exported: torch.Tensor,
                   labels: torch.Tensor | None = None, tolerance: float | None = None) -> Parity:
    """Parity figures of ``exported`` logits against PyTorch's ``reference`` logits."""
    ref = reference.reshape(-1, reference.shape[-1]).float()
    got = exported.reshape(-1, exported.shape[-1]).float()
    diff = (ref - got).abs().max().item()
    acc_ref = acc_got = delta = None
    if labels is not None:
        lab = labels.reshape(-1)
        acc_ref = (ref.argmax(-1) == lab).float().mean().item()
        acc_got = (got.argmax(-1) == lab).float().mean().item()
        delta = 100 * (acc_got - acc_ref)
    return Parity(variant, int(reference.shape[0]), diff,
                  (ref.argmax(-1) == got.argmax(-1)).float().mean().item(), acc_ref, acc_got, delta,
                  tolerance, tolerance is None or diff <= tolerance)


def _remove(path: Path) -> None:
    """Delete a failed export (and its external weights) so it cannot be shipped by mistake."""
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def export_model(student: nn.Module, out_dir: str | Path, *, inputs, labels: torch.Tensor | None = None,
                 teacher: nn.Module | None = None, name: str = "student", quantize: str | None = None,
                 torch_export: bool = False, threads: int = THREADS, large_batch: int = 256,
                 repeats_b1: int = REPEATS_B1, repeats_large: int = REPEATS_LARGE, atol: float = 1e-4,
                 rtol: float = 1e-4, int8_max_drop_points: float = 2.0,
                 dynamic_axes: Sequence[dict[int, str]] | None = None, timing: bool = True,
                 report_path: str | Path | None = None) -> dict:
    """Export ``student`` to ``out_dir`` (ONNX fp32, optionally int8 and ``.pt2``), check parity
    on ``inputs`` (held-out samples; ``labels`` for accuracy), time the variants next to
    ``teacher``, and return the report (also written to ``report_path`` when given).

    ``inputs`` is a tensor (or tuple of tensors) with the samples on axis 0: images for
    classifiers, token ids ``[batch, sequence]`` for language models.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be 'int8' or None, got {quantize!r}")
    out_dir = Path(out_dir)
    root = (Path(report_path).parent if report_path else out_dir).resolve()

    def rel(p: Path) -> str:  # paths in the report are relative to where the report lives
        p = Path(p).resolve()
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    inputs = as_tuple(inputs)
    student = student.eval()
    fp32_path, program = export_onnx(student, tuple(x[:2] for x in inputs), out_dir / f"{name}.onnx",
                                     dynamic_axes=dynamic_axes, keep_program=True)
    reference = torch_logits(student, inputs)
    tolerance = atol + rtol * reference.abs().max().item()
    sessions = {"onnx_fp32": ort_session(fp32_path, threads)}
    parity = {"onnx_fp32": compare_logits("onnx_fp32", reference,
                                          onnx_logits(sessions["onnx_fp32"], inputs), labels, tolerance)}
    if not parity["onnx_fp32"].passed:
        p = parity["onnx_fp32"]
        _remove(fp32_path)
        raise ExportError(f"ONNX fp32 export of {name} is not faithful: max |logit difference| "
                          f"{p.max_abs_diff:.3g} > tolerance {tolerance:.3g} (atol {atol} + rtol {rtol} "
                          f"x max|logit|), top-1 agreement {100 * p.top1_agreement:.2f}%; {fp32_path} "
                          "was removed (report the model and torch/onnxscript versions upstream)")
    artifacts = {"onnx_fp32": {"path": rel(fp32_path), "bytes": onnx_bytes(fp32_path)}}
    if quantize == "int8":
        int8_path = quantize_int8(fp32_path, out_dir / f"{name}.int8.onnx")
        sessions["onnx_int8"] = ort_session(int8_path, threads)
        p = parity["onnx_int8"] = compare_logits("onnx_int8", reference,
                                                 onnx_logits(sessions["onnx_int8"], inputs), labels)
        artifacts["onnx_int8"] = {"path": rel(int8_path), "bytes": onnx_bytes(int8_path)}
        if p.accuracy_delta_points is not None and p.accuracy_delta_points < -int8_max_drop_points:
            _remove(int8_path)
            raise ExportError(f"int8 quantization cost {name} {-p.accuracy_delta_points:.2f} accuracy "
                              f"points (> {int8_max_drop_points}), so {int8_path} was removed; deploy "
                              f"the fp32 export {fp32_path}, or allow more with --int8-max-drop")
    if torch_export:
        pt2 = out_dir / f"{name}.pt2"
        with quiet():
            torch.export.save(program, str(pt2))
            loaded = torch.export.load(str(pt2)).module()
        with torch.no_grad():
            got = torch.cat([loaded(*(x[i:i + 512] for x in inputs)) for i in range(0, inputs[0].shape[0], 512)])
        parity["torch_export"] = compare_logits("torch_export", reference, got, labels, tolerance)
        artifacts["torch_export"] = {"path": rel(pt2), "bytes": pt2.stat().st_size}
    report = {
        "model": name, "versions": library_versions(), "artifacts": artifacts,
        "parity": {k: asdict(v) for k, v in parity.items()},
        "timing": {"threads": threads, "batch_size_large": large_batch, "repeats_b1": repeats_b1,
                   "repeats_large": repeats_large} if timing else None,
        "rows": _rows(student, teacher, name, sessions, artifacts, inputs, labels, reference, parity,
                      threads=threads, large_batch=large_batch, repeats_b1=repeats_b1,
                      repeats_large=repeats_large, timing=timing),
    }
    if report_path is not None:
        from kdistill.checkpoint import atomic_write_text

        atomic_write_text(Path(report_path), json.dumps(report, indent=2))
    return report


def _rows(student, teacher, name, sessions, artifacts, inputs, labels, reference, parity, *,
          threads, large_batch, repeats_b1, repeats_large, timing) -> list[dict]:
    """One row per variant: size, accuracy, and (when timing) latency and throughput."""
    def accuracy(logits):
        if labels is None:
            return None
        return (logits.reshape(-1, logits.shape[-1]).argmax(-1) == labels.reshape(-1)).float().mean().item()

    variants = {}
    if teacher is not None:
        teacher = teacher.eval()
        variants["teacher"] = dict(runtime="pytorch", precision="fp32", size_bytes=model_bytes(teacher),
                                   accuracy=accuracy(torch_logits(teacher, inputs)))
    variants[name] = dict(runtime="pytorch", precision="fp32", size_bytes=model_bytes(student),
                          accuracy=accuracy(reference))
    for key, session in sessions.items():
        variants[f"{name} onnx {key.split('_')[1]}"] = dict(
            runtime="onnxruntime", precision=key.split("_")[1], size_bytes=artifacts[key]["bytes"],
            accuracy=parity[key].accuracy_exported)
    if timing:
        models = {"teacher": teacher} if teacher is not None else {}
        models[name] = student
        exported = {f"{name} onnx {key.split('_')[1]}": session for key, session in sessions.items()}
        times = variant_timings(models, exported, inputs, threads=threads, large_batch=large_batch,
                                repeats_b1=repeats_b1, repeats_large=repeats_large)
        for k, t in times.items():
            variants[k].update(asdict(t))
    return [{"name": k, **{f: None for f in asdict(Timing(0, 0, 0))}, **v} for k, v in variants.items()]


def _widen_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` samples, repeated when there are fewer (timing needs a full batch)."""
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n] if reps > 1 else x[:n]


def variant_timings(models: dict[str, nn.Module], sessions: dict, inputs, *, large_batch: int,
                    **policy) -> dict[str, Timing]:
    """PyTorch models (their logits, as exported) and ONNX Runtime sessions timed together by
    kdistill.timing on the first sample (latency) and ``large_batch`` samples (throughput)."""
    inputs = as_tuple(inputs)
    runners = {k: torch_runner(LogitsOnly(m).eval()) for k, m in models.items()}
    runners.update({k: onnx_runner(session) for k, session in sessions.items()})
    big = tuple(_widen_to(x, large_batch) for x in inputs)
    return time_variants(runners, tuple(x[:1] for x in inputs), big, **policy)
