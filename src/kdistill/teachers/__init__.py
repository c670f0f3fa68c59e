"""Teacher sources: one interface for every way of getting the teacher's outputs for a batch."""

from kdistill.teachers.base import TeacherSource, to_logits
from kdistill.teachers.cache import CachedTeacher, cache_teacher, open_cache, write_cache
from kdistill.teachers.ensemble import EnsembleTeacher, combine_logits
from kdistill.teachers.live import LiveTeacher

__all__ = ["CachedTeacher", "EnsembleTeacher", "LiveTeacher", "TeacherSource", "cache_teacher", "combine_logits",
           "open_cache", "to_logits", "write_cache"]
