"""Teacher sources: one interface for every way of getting the teacher's outputs for a batch."""

from kdistill.teachers.base import TeacherSource, to_logits
from kdistill.teachers.live import LiveTeacher

__all__ = ["LiveTeacher", "TeacherSource", "to_logits"]
