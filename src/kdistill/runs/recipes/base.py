"""The recipe interface: what differs between tasks, and nothing else.

The pipeline (``kdistill.runs``) does the rest once for every task: roles and run directories,
config.yaml / summary.json / comparison.json, the report, seeds, torchrun sessions and rank-0
gating, global-state hygiene, reuse of trained roles, export of a run. A recipe says how its
task's data is built, how a role's model, batches, task, objective and teacher source are made,
how a model is saved and loaded, how models are compared, and what inputs an export checks.

Add a task: a ``Task`` (tasks/) and a ``Recipe`` subclass here, registered in ``RECIPES``
(runs/recipes/__init__.py) under the config's ``task`` name, plus its config class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from kdistill.errors import ConfigError
from kdistill.losses.objectives import Objective
from kdistill.errors import ConfigError
from kdistill.runs.roles import ROLES, role_dir  # noqa: F401  (ROLES re-exported: the roles every recipe serves)
from kdistill.tasks.base import Task
from kdistill.teachers.base import TeacherSource



@dataclass
class Plan:
    """Everything the engine needs to train one role, and what to save afterwards."""

    model: nn.Module                    # what the engine optimises (student plus connectors)
    task: Task
    train_batches: object               # this rank's shard
    val_batches: object | None
    objective: Objective
    teacher: TeacherSource | None = None
    num_outputs: int | None = None      # class count to check the student against
    exported: Callable[[], nn.Module] | None = None  # the plain model to save (connectors dropped)
    notes: dict = field(default_factory=dict)        # recipe-specific lines of summary.json

    def saved_model(self) -> nn.Module:
        return self.exported() if self.exported else self.model


class Recipe:
    """One task's choices; every method takes the run's config (and the recipe's data)."""

    def build_data(self, cfg):
        raise NotImplementedError

    def plan(self, cfg, data, role: str, ctx, *, teacher=None, student: nn.Module | None = None) -> Plan:
        """The model, batches for this rank (``ctx``), task, objective and teacher source of
        ``role``; ``teacher`` / ``student`` may be given from Python (a module or a source)."""
        raise NotImplementedError

    def cache_teacher(self, cfg, data):
        """Run the config's teacher over the training split into the cache ``teacher.path`` names
        (``kdistill cache-teacher``); returns the cache opened as a teacher source."""
        raise ConfigError(f"task {cfg.task} has no teacher cache: use `teacher.kind: live`")

    def teacher_needs_training(self, cfg) -> bool:
        """Whether the config's teacher must be trained (``--role teacher``) before distilling."""
        raise NotImplementedError

    def save(self, model: nn.Module, out_dir: Path, data) -> None:
        raise NotImplementedError

    def load(self, cfg, data, role: str) -> nn.Module | None:
        """A trained model of this run, or None when that role has not been trained (a teacher:
        when the config names none or it is not trained yet)."""
        if role == "teacher":
            if getattr(cfg.teacher, "model", None) is None:
                return None
            try:
                return self.teacher_model(cfg, data)
            except ConfigError:
                return None
        return self.load_student(cfg, data, role_dir(cfg, role))

    def teacher_model(self, cfg, data) -> nn.Module:
        """The config's teacher, ready to distil from (bundled, a weights file, or trained here)."""
        raise NotImplementedError

    def load_student(self, cfg, data, folder: Path) -> nn.Module | None:
        """The student saved in ``folder`` by ``save``, or None when there is none."""
        raise NotImplementedError

    def compare(self, cfg, data, models: dict[str, nn.Module]) -> tuple[list, dict]:
        """Rows of held-out metrics per model (teacher first when present) and the
        comparison.json fields that describe the split (samples, class names...)."""
        raise NotImplementedError

    def export_inputs(self, cfg, data, samples: int | None):
        """(inputs, labels or None) of the test split for an export's parity check."""
        raise NotImplementedError

    def same_inputs_as_teacher(self, cfg) -> bool:
        """Whether the teacher reads the student's inputs (then an export times them side by side)."""
        return True

    def export_checks(self, model: nn.Module, folder: Path, name: str, inputs, quantize) -> dict:
        """Task-specific checks of an exported model, added to export.json."""
        return {}
