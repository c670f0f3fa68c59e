"""Edge deployment: ONNX export, int8 quantization, and the proof that nothing was lost.

    from kdistill.export import export_model
    # a run directory: kdistill.runs.export.export_run("runs/mnist-demo", quantize="int8")
    report = export_model(student, "out/", inputs=x_test, labels=y_test, teacher=teacher)

Steps, each checked:

1. **ONNX fp32** with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), with a dynamic
   batch axis on every input and a dynamic sequence axis on integer token-id inputs (language
   models). Only the logits are exported (Hugging Face models run with ``use_cache=False``).
2. **Parity** on held-out data: PyTorch against ONNX Runtime, max abs logit difference, top-1
   agreement and accuracy delta. An fp32 export off by more than ``atol + rtol * max|logit|``
   raises :class:`ExportError`: a wrong model must not leave silently.
3. **int8** (optional) with ONNX Runtime dynamic quantization (weights int8, activations quantized
   on the fly). Only MatMul/Gemm are quantized by default: on ORT's CPU provider a dynamically
   quantized Conv (ConvInteger) runs several times slower than the fp32 Conv, while the linear
   layers that hold most of a small student's weights shrink 4x and run faster. int8 parity is
   reported; the guard fails the export only when accuracy drops by more than
   ``int8_max_drop_points`` (default 2 points), since a small loss is the expected price.
   A language model's export also decodes greedily in ONNX Runtime (:func:`onnx_generate`).
4. **torch.export** (optional): the captured ``ExportedProgram`` saved as ``.pt2``.
5. **Latency and size** of the teacher (PyTorch), the student (PyTorch), the student in ONNX fp32
   and int8: median and p95 latency at batch 1 and throughput at a large batch, all variants
   measured interleaved in the same loop (so machine load hits them alike), both runtimes pinned
   to ``threads`` intra-op threads (default 1: stable numbers on a shared CPU).

``export.json`` (in the run directory) is plain JSON:

- ``model``: role / name exported; ``versions``: torch, onnx, onnxruntime, onnxscript;
- ``artifacts``: ``{variant: {"path": relative path, "bytes": file size}}`` for ``onnx_fp32``,
  ``onnx_int8``, ``torch_export``;
- ``parity``: ``{variant: Parity}`` (see :class:`Parity`; accuracy fields are fractions, the delta
  is in percentage points);
- ``timing``: ``{"threads", "batch_size_large", "repeats_b1", "repeats_large"}``;
- ``rows``: one row per variant, the table the run report shows: ``name``, ``runtime``,
  ``precision``, ``size_bytes``, ``accuracy`` (or null), ``latency_ms_b1_median``,
  ``latency_ms_b1_p95``, ``throughput_per_s``.
"""

from kdistill.export.onnx import (INT8_OPS, LogitsOnly, default_dynamic_axes, export_onnx, library_versions, onnx_bytes,
                                  onnx_generate, onnx_logits, onnx_runner, ort_session, quantize_int8,
                                  strip_debug_metadata, torch_logits, unsupported_operator)
from kdistill.export.parity import Parity, compare_logits, export_model
from kdistill.present import format_export_rows as format_rows
from kdistill.timing import Timing, time_variants, torch_runner

__all__ = ["INT8_OPS", "LogitsOnly", "Parity", "Timing", "compare_logits", "default_dynamic_axes",
           "export_model", "export_onnx", "format_rows", "library_versions", "onnx_bytes", "onnx_generate",
           "onnx_logits", "onnx_runner", "ort_session", "quantize_int8", "strip_debug_metadata",
           "time_variants", "torch_logits", "torch_runner", "unsupported_operator"]
