"""The teacher-source interface and the adapter from model outputs to logits."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from kdistill.errors import ModelError
from kdistill.outputs import Outputs


def to_logits(output) -> torch.Tensor:
    """Logits from what models return: a tensor, a tuple/list (first item), an object with
    ``.logits`` (Hugging Face) or a dict with ``"logits"``."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        return output.logits
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"cannot find logits in a model output of type {type(output).__name__}; "
                     "return a tensor, a tuple whose first item is the logits, or an object with .logits")


class TeacherSource(ABC):
    """Gives the teacher's logits for a batch, without gradients, on the student's device."""

    #: number of classes (or vocabulary size) the teacher predicts
    num_outputs: int

    @abstractmethod
    def logits(self, batch: dict) -> torch.Tensor:
        """Teacher logits aligned with the batch's samples."""

    def outputs(self, batch: dict) -> Outputs:
        """Everything the run's method reads from the teacher for a batch (sources that can give
        intermediate layers override this); the engine calls it once per micro-batch."""
        return Outputs(self.logits(batch))

    def describe(self) -> dict:
        """What identifies this teacher (logged and recorded with caches)."""
        return {"kind": type(self).__name__}
