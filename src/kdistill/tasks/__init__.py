"""Tasks say how a batch becomes model inputs, targets, a loss and metrics."""

from kdistill.tasks.base import Task
from kdistill.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask", "Task"]
