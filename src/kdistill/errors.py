"""Errors users can act on: each message names the field, file or package and the fix."""


class KDistillError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class ConfigError(KDistillError):
    pass


class DataError(KDistillError):
    pass


class ModelError(KDistillError):
    pass


class CheckpointError(KDistillError):
    pass


class TrainingError(KDistillError):
    pass


class ReportError(KDistillError):
    pass


class CacheError(KDistillError):
    """A teacher cache that is missing, damaged, or written for other data, teacher or settings."""

class ExportError(KDistillError):
    pass
