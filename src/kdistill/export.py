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

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from kdistill.errors import ExportError
from kdistill.evaluate import model_bytes
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


def _as_tuple(inputs) -> tuple[torch.Tensor, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def default_dynamic_axes(example_inputs) -> list[dict[int, str]]:
    """Axis 0 is the batch for every input; integer inputs of rank >= 2 (token ids, masks) also
    get a dynamic sequence axis 1."""
    axes = []
    for x in _as_tuple(example_inputs):
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
def _quiet():
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


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__}


def _require_onnx() -> None:
    try:
        _versions()
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
    inputs = _as_tuple(example_inputs)
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
    v = _versions()
    try:
        with _quiet(), torch.no_grad():
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
    with _quiet():
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
    return {i.name: x.numpy() for i, x in zip(session.get_inputs(), _as_tuple(inputs))}


def onnx_logits(session, inputs, batch_size: int = 512) -> torch.Tensor:
    """Logits of an ONNX session over all samples, in batches."""
    inputs = _as_tuple(inputs)
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
    inputs = _as_tuple(inputs)
    wrapped = LogitsOnly(model)
    return torch.cat([wrapped(*(x[i:i + batch_size] for x in inputs)).float()
                      for i in range(0, inputs[0].shape[0], batch_size)])


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


# ---------------------------------------------------------------- timing
@dataclass
class Timing:
    latency_ms_b1_median: float
    latency_ms_b1_p95: float
    throughput_per_s: float


def torch_runner(model: nn.Module) -> Callable:
    """For :func:`time_variants`: a PyTorch model's forward pass in inference mode."""
    wrapped = LogitsOnly(model).eval()

    def run(inputs):
        with torch.inference_mode():
            wrapped(*inputs)
    return lambda inputs: (lambda: run(inputs))


def onnx_runner(session) -> Callable:
    """For :func:`time_variants`: an ONNX Runtime session's run (inputs converted beforehand)."""
    def prepare(inputs):
        feed = _feed(session, inputs)
        return lambda: session.run(None, feed)
    return prepare


def time_variants(runners: dict[str, Callable], sample_b1, sample_large, *, threads: int = 1,
                  repeats_b1: int = 200, repeats_large: int = 10, warmup: int = 5) -> dict[str, Timing]:
    """Median / p95 batch-1 latency and large-batch throughput of each runner, measured
    interleaved (each round times every variant once, in rotating order) with torch pinned to
    ``threads`` intra-op threads for the duration. ``runners[name](inputs)`` returns a
    zero-argument callable that runs one forward pass on prepared inputs."""
    b1 = {k: r(_as_tuple(sample_b1)) for k, r in runners.items()}
    big = {k: r(_as_tuple(sample_large)) for k, r in runners.items()}
    n_large = _as_tuple(sample_large)[0].shape[0]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for calls in (b1, big):
            for fn in calls.values():
                for _ in range(warmup):
                    fn()

        def rounds(calls, repeats):
            times = {k: [] for k in calls}
            names = list(calls)
            for r in range(repeats):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    t = time.perf_counter()
                    calls[k]()
                    times[k].append(time.perf_counter() - t)
            return times

        t1, tl = rounds(b1, repeats_b1), rounds(big, repeats_large)
    finally:
        torch.set_num_threads(old_threads)
    return {k: Timing(1e3 * float(np.median(t1[k])), 1e3 * float(np.percentile(t1[k], 95)),
                      n_large / float(np.median(tl[k]))) for k in runners}


# ---------------------------------------------------------------- the whole export
def _remove(path: Path) -> None:
    """Delete a failed export (and its external weights) so it cannot be shipped by mistake."""
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def export_model(student: nn.Module, out_dir: str | Path, *, inputs, labels: torch.Tensor | None = None,
                 teacher: nn.Module | None = None, name: str = "student", quantize: str | None = None,
                 torch_export: bool = False, threads: int = 1, large_batch: int = 256,
                 repeats_b1: int = 200, repeats_large: int = 10, atol: float = 1e-4,
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

    inputs = _as_tuple(inputs)
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
        with _quiet():
            torch.export.save(program, str(pt2))
            loaded = torch.export.load(str(pt2)).module()
        with torch.no_grad():
            got = torch.cat([loaded(*(x[i:i + 512] for x in inputs)) for i in range(0, inputs[0].shape[0], 512)])
        parity["torch_export"] = compare_logits("torch_export", reference, got, labels, tolerance)
        artifacts["torch_export"] = {"path": rel(pt2), "bytes": pt2.stat().st_size}
    report = {
        "model": name, "versions": _versions(), "artifacts": artifacts,
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
        runners = {}
        if teacher is not None:
            runners["teacher"] = torch_runner(teacher)
        runners[name] = torch_runner(student)
        for key, session in sessions.items():
            runners[f"{name} onnx {key.split('_')[1]}"] = onnx_runner(session)
        big = tuple(_widen_to(x, large_batch) for x in inputs)
        times = time_variants(runners, tuple(x[:1] for x in inputs), big, threads=threads,
                              repeats_b1=repeats_b1, repeats_large=repeats_large)
        for k, t in times.items():
            variants[k].update(asdict(t))
    return [{"name": k, **{f: None for f in asdict(Timing(0, 0, 0))}, **v} for k, v in variants.items()]


def _widen_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` samples, repeated when there are fewer (timing needs a full batch)."""
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n] if reps > 1 else x[:n]


def format_rows(report: dict) -> str:
    """The export report as a plain-text table (what the CLI prints)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export of {report['model']}")
    large = (report.get("timing") or {}).get("batch_size_large", "")
    for col in ["variant", "runtime", "size", "accuracy", "b1 median", "b1 p95", f"throughput b{large}"]:
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    ms = lambda v: "-" if v is None else f"{v:.3f} ms"
    for r in report["rows"]:
        table.add_row(r["name"], f"{r['runtime']} {r['precision']}", f"{r['size_bytes'] / 1e3:,.1f} kB",
                      "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%",
                      ms(r["latency_ms_b1_median"]), ms(r["latency_ms_b1_p95"]),
                      "-" if r["throughput_per_s"] is None else f"{r['throughput_per_s']:,.0f}/s")
    lines = []
    for k, p in report["parity"].items():
        acc = "" if p["accuracy_delta_points"] is None else f", accuracy delta {p['accuracy_delta_points']:+.2f} points"
        lines.append(f"parity {k}: max |logit diff| {p['max_abs_diff']:.2e}, top-1 agreement "
                     f"{100 * p['top1_agreement']:.2f}%{acc}")
    console = Console(width=140, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text() + "\n".join(lines)
