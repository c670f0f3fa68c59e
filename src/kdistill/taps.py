"""Feature taps and connectors: intermediate outputs of any model, read without rewriting it.

A tap names a module by its path, exactly as ``model.named_modules()`` spells it (``features.3``
in the built-in CNN, ``net.2`` in the MLP, ``bert.encoder.layer.1`` in a Hugging Face BERT,
anything in a model given from Python), and records that module's output on every forward
through a forward hook. Nothing about the model changes: remove the hooks and it is the model it
was. A wrong path is refused at set-up with the nearest names, before any training.

When the student's tapped feature does not have the teacher's shape, a *connector*
(``make_connector``) maps one to the other: a linear layer for vectors and token states, a 1x1
convolution (after adaptive average pooling when the student's map is larger) for conv maps.
Connectors are trained with the student: keep them in an ``nn.ModuleDict`` beside it, give their
``parameters()`` to the optimizer, save their ``state_dict()`` in the checkpoint, and leave them
out of the exported model, which never calls them.
"""

from __future__ import annotations

import difflib
from typing import Callable, Iterable

import torch
from torch import nn

from kdistill.errors import ConfigError, TrainingError


def resolve_modules(model: nn.Module, paths: Iterable[str], field: str = "tap") -> dict[str, nn.Module]:
    """The modules at ``paths``; an unknown path is a one-line ConfigError naming the nearest ones."""
    modules = dict(model.named_modules())
    found = {}
    for path in paths:
        if path not in modules:
            names = [name for name in modules if name]
            near = difflib.get_close_matches(path, names, n=5, cutoff=0.5) or names[:8]
            raise ConfigError(f"{field}: {type(model).__name__} has no module {path!r}; nearest: "
                              f"{', '.join(near)} (paths as model.named_modules() names them)")
        found[path] = modules[path]
    return found


def _tensor_of(output, path: str) -> torch.Tensor:
    """The feature a module returned: a tensor, the first tensor of a tuple (HF layers with
    attentions), or ``last_hidden_state`` / the first tensor of a dict-like HF output."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "last_hidden_state") and isinstance(output.last_hidden_state, torch.Tensor):
        return output.last_hidden_state
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise TrainingError(f"tap {path!r}: the module returned {type(output).__name__}, which holds no "
                        "tensor; tap a module that returns its feature")


class FeatureTaps:
    """Forward hooks recording the outputs of the modules at ``paths``.

    Use as a context manager (hooks removed on exit) or call ``remove()``. After a forward,
    ``collect()`` returns ``{path: output}`` and forgets them, so every forward is read once. A
    module called several times in one forward (shared weights) keeps its last output. Outputs
    keep their autograd graph (a student's features train it); outputs recorded under
    ``torch.inference_mode`` (a live teacher) are cloned into ordinary tensors by ``collect``,
    since an inference tensor cannot be saved for a backward pass.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], *, field: str = "tap"):
        self.paths = list(dict.fromkeys(paths))
        self._outputs: dict[str, torch.Tensor] = {}
        modules = resolve_modules(model, self.paths, field)
        self._handles = [module.register_forward_hook(self._recorder(path)) for path, module in modules.items()]

    def _recorder(self, path: str):
        def record(module, args, output):
            self._outputs[path] = _tensor_of(output, path)
        return record

    def collect(self) -> dict[str, torch.Tensor]:
        missing = [path for path in self.paths if path not in self._outputs]
        if missing:
            raise TrainingError(f"taps {missing} recorded nothing: their modules did not run in the "
                                "last forward (collect() after each forward, and tap modules on its path)")
        outputs, self._outputs = self._outputs, {}
        return {path: outputs[path].clone() if outputs[path].is_inference() else outputs[path]
                for path in self.paths}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs = {}

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def probe_shapes(model: nn.Module, paths: Iterable[str], forward: Callable[[], object],
                 field: str = "tap") -> dict[str, tuple[int, ...]]:
    """Per-sample shapes (batch dimension dropped) of the tapped outputs, from one forward that
    ``forward()`` runs (e.g. ``lambda: model(first_batch)``): what ``make_connector`` needs, known
    before training starts."""
    with FeatureTaps(model, paths, field=field) as taps:
        forward()
        return {path: tuple(out.shape[1:]) for path, out in taps.collect().items()}


def make_connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...],
                   field: str = "connector") -> nn.Module:
    """A module mapping a student feature of per-sample shape ``student_shape`` to
    ``teacher_shape`` (FitNets' regressor). Shapes exclude the batch dimension.

    - equal shapes: ``nn.Identity`` (nothing to learn);
    - (D,) -> (D',) and (L, D) -> (L, D'): ``nn.Linear(D, D')`` on the last dimension;
    - (C, H, W) -> (C', H', W'): a 1x1 ``nn.Conv2d(C, C')`` (when C != C'), after
      ``nn.AdaptiveAvgPool2d((H', W'))`` when the student's map is larger in both directions.

    Anything else (different ranks, a student map smaller than the teacher's, token states of
    different lengths) is refused with one ConfigError line: no small learned map bridges it.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    where = f"{field}: student feature {s} and teacher feature {t}"
    if s == t:
        return nn.Identity()
    if len(s) != len(t):
        raise ConfigError(f"{where} differ in rank: no connector maps one to the other; tap layers of "
                          "the same kind (both conv maps, or both vectors)")
    if len(s) == 1 or (len(s) == 2 and s[0] == t[0]):
        return nn.Linear(s[-1], t[-1])
    if len(s) == 2:
        raise ConfigError(f"{where} cover different numbers of positions; teacher and student must "
                          "see the same tokens")
    if len(s) == 3:
        parts: list[nn.Module] = []
        if s[1:] != t[1:]:
            if s[1] < t[1] or s[2] < t[2]:
                raise ConfigError(f"{where}: the student's map is smaller than the teacher's; tap a "
                                  "deeper teacher layer or a shallower student layer (pooling only shrinks)")
            parts.append(nn.AdaptiveAvgPool2d(t[1:]))
        if s[0] != t[0]:
            parts.append(nn.Conv2d(s[0], t[0], kernel_size=1))
        return parts[0] if len(parts) == 1 else nn.Sequential(*parts)
    raise ConfigError(f"{where}: connectors map vectors (D,), token states (L, D) or conv maps "
                      "(C, H, W); tap a layer with one of these shapes")


class WithConnectors(nn.Module):
    """The student plus what distillation trains beside it: connectors, text projections, a
    learned temperature (``connectors``, an ``nn.ModuleDict``).

    The engine optimises and checkpoints this module, so those parts are trained with the student
    and resumed with it; its forward is the student's, and only ``.student`` (``unwrap``) is saved
    or exported.
    """

    def __init__(self, student: nn.Module, connectors: dict[str, nn.Module] | nn.ModuleDict):
        super().__init__()
        self.student = student
        self.connectors = connectors if isinstance(connectors, nn.ModuleDict) else nn.ModuleDict(connectors)

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain student inside a ``WithConnectors`` (any other model as it is)."""
    return model.student if isinstance(model, WithConnectors) else model
