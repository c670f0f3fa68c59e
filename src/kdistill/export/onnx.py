"""ONNX export, int8 quantization and ONNX Runtime inference (see the package notes)."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from kdistill.errors import ExportError
from kdistill.teachers.base import to_logits

INT8_OPS = ("MatMul", "Gemm")
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: bigger models keep weights beside


class LogitsOnly(nn.Module):
    """Wraps a model so that it returns just its logits tensor (tuple / ``.logits`` outputs),
    and runs Hugging Face models without a KV cache: the graph to export is inputs -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.extra = {"use_cache": False} if "use_cache" in params else {}

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return to_logits(self.model(*inputs, **self.extra))


def as_tuple(inputs) -> tuple[torch.Tensor, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def default_dynamic_axes(example_inputs) -> list[dict[int, str]]:
    """Axis 0 is the batch for every input; integer inputs of rank >= 2 (token ids, masks) also
    get a dynamic sequence axis 1."""
    axes = []
    for x in as_tuple(example_inputs):
        a = {0: "batch"}
        if not x.is_floating_point() and x.dim() >= 2:
            a[1] = "sequence"
        axes.append(a)
    return axes


def _widen(x: torch.Tensor, axes: dict[int, str]) -> torch.Tensor:
    """torch.export specialises dimensions of size 0 and 1: give dynamic axes at least 2."""
    for ax in axes:
        if x.shape[ax] < 2:
            reps = [1] * x.dim()
            reps[ax] = 2
            x = x.repeat(*reps)
    return x


@contextlib.contextmanager
def quiet():
    """The exporter and the quantizer log notes meant for their developers; keep ours clean
    (failures still raise, with the root cause in the message)."""
    names = ["torch", "torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", ""]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # failed captures print whole graphs
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


_NO_LOWERING = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)")
_NODE_TARGET = re.compile(r"target=torch\.ops\.([\w.]+)")
_SUMMARY = re.compile(r"^<class '[\w.]+'>: (.+)$", re.MULTILINE)


def _messages(exc: BaseException) -> list[str]:
    """Messages of an exception and its causes, outermost first."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def unsupported_operator(exc: BaseException) -> str | None:
    """The operator the ONNX exporter could not translate, parsed from its error, or None."""
    text = "\n".join(_messages(exc))
    if m := _NO_LOWERING.search(text):
        return f"{m.group(1)}.{m.group(2)}"
    if "ConversionError" in text or "Error when translating node" in text:
        if m := _NODE_TARGET.search(text):
            return m.group(1)
    return None


def _export_failure(exc: BaseException, versions: str) -> ExportError:
    op = unsupported_operator(exc)
    if op is not None:
        return ExportError(
            f"cannot export to ONNX: operator `{op}` has no ONNX translation ({versions}); replace "
            f"it in the model with standard torch operations, or register a translation with "
            f"torch.onnx.export(custom_translation_table={{torch.ops.{op}: onnxscript_function}})")
    text = "\n".join(_messages(exc))
    summary = _SUMMARY.search(text)  # the exporter's own one-line summary of the root error
    first = summary.group(1) if summary else next(
        (line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return ExportError(f"cannot export to ONNX ({versions}): {first[:400]} (the model must be "
                       "capturable by torch.export: no data-dependent Python control flow)")


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__}


def _require_onnx() -> None:
    try:
        library_versions()
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx extra ({exc.name} is missing): "
                          "`pip install 'kdistill[onnx]'`") from None


def onnx_bytes(path: str | Path) -> int:
    """Size on disk of an ONNX model, its external weights file included."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def export_onnx(model: nn.Module, example_inputs, path: str | Path, *,
                dynamic_axes: Sequence[dict[int, str]] | None = None,
                input_names: Sequence[str] | None = None, opset: int | None = None,
                keep_program: bool = False):
    """Export ``model``'s logits to ONNX at ``path`` with the dynamo exporter.

    ``example_inputs`` is a tensor or a tuple of tensors; ``dynamic_axes`` gives, per input,
    ``{axis: name}`` (default: :func:`default_dynamic_axes`). Returns the path, or with
    ``keep_program`` the ``torch.export.ExportedProgram`` it captured too. An operator without an
    ONNX translation raises :class:`ExportError` naming it.
    """
    _require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = as_tuple(example_inputs)
    axes = list(dynamic_axes) if dynamic_axes is not None else default_dynamic_axes(inputs)
    if len(axes) != len(inputs):
        raise ExportError(f"dynamic_axes has {len(axes)} entries for {len(inputs)} inputs")
    dims: dict[str, torch.export.Dim] = {}
    shapes = tuple({ax: dims.setdefault(name, torch.export.Dim(name)) for ax, name in a.items()}
                   for a in axes)
    inputs = tuple(_widen(x, a) for x, a in zip(inputs, axes))
    names = list(input_names) if input_names else (
        ["inputs"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))])
    wrapped = LogitsOnly(model).eval()
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    v = library_versions()
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                wrapped, inputs, str(path), dynamo=True, verbose=False, input_names=names,
                output_names=["logits"], dynamic_shapes=(shapes,), opset_version=opset,
                external_data=big)
    except Exception as exc:  # the exporter raises many types; all become one clear message
        raise _export_failure(exc, f"torch {v['torch']}, onnxscript {v['onnxscript']}") from exc
    strip_debug_metadata(path)
    return (path, program.exported_program) if keep_program else path


def strip_debug_metadata(path: str | Path) -> None:
    """Drop the exporter's per-node debug records (Python stack traces with this machine's
    source paths, module names, FX nodes): a deployable file should not carry them, and they
    were ~4% of a small student's file. Weights and shapes are untouched."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def clean(nodes) -> None:
        for node in nodes:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                for graph in [attr.g] * attr.HasField("g") + list(attr.graphs):
                    clean(graph.node)

    clean(model.graph.node)
    for fn in model.functions:
        clean(fn.node)
    onnx.save(model, str(path))


def quantize_int8(src: str | Path, dst: str | Path, *, ops: Sequence[str] = INT8_OPS) -> Path:
    """Dynamic int8 quantization with ONNX Runtime (int8 weights, activations quantized at run
    time, no calibration data). ``ops``: the operator types to quantize (see module doc)."""
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with quiet():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=list(ops),
                         use_external_data_format=(src.with_name(src.name + ".data")).is_file())
    return dst


def ort_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session pinned to ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feed(session, inputs) -> dict[str, np.ndarray]:
    return {i.name: x.numpy() for i, x in zip(session.get_inputs(), as_tuple(inputs))}


def onnx_logits(session, inputs, batch_size: int = 512) -> torch.Tensor:
    """Logits of an ONNX session over all samples, in batches."""
    inputs = as_tuple(inputs)
    n = inputs[0].shape[0]
    out = [session.run(None, _feed(session, tuple(x[i:i + batch_size] for x in inputs)))[0]
           for i in range(0, n, batch_size)]
    return torch.from_numpy(np.concatenate(out))


def onnx_generate(session, input_ids: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy decoding of an exported causal LM through ONNX Runtime. The graph has no KV cache,
    so each step re-runs the whole sequence: fine for the short outputs of small students.
    Prompts in a batch must have the same length (the graph takes no attention mask)."""
    ids = input_ids.numpy()
    name = session.get_inputs()[0].name
    for _ in range(max_new_tokens):
        following = session.run(None, {name: ids})[0][:, -1].argmax(-1)
        ids = np.concatenate([ids, following[:, None].astype(ids.dtype)], axis=1)
        if eos_token_id is not None and (following == eos_token_id).all():
            break
    return torch.from_numpy(ids)


@torch.inference_mode()
def torch_logits(model: nn.Module, inputs, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    inputs = as_tuple(inputs)
    wrapped = LogitsOnly(model)
    return torch.cat([wrapped(*(x[i:i + batch_size] for x in inputs)).float()
                      for i in range(0, inputs[0].shape[0], batch_size)])


def onnx_runner(session) -> Callable:
    """For :func:`kdistill.timing.time_variants`: an ONNX Runtime session's run (inputs converted beforehand)."""
    def prepare(inputs):
        feed = _feed(session, inputs)
        return lambda: session.run(None, feed)
    return prepare
