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


class OutputError(KDistillError):
    """A file of the run cannot be written: disk full, read-only, a file where a folder should be."""


class ReportError(KDistillError):
    pass


class CacheError(KDistillError):
    """A teacher cache that is missing, damaged, or written for other data, teacher or settings."""


class ExportError(KDistillError):
    pass


class RunInterrupted(KDistillError):
    """SIGTERM or Ctrl-C stopped a run after a checkpoint was written; ``--resume`` continues it.
    The CLI exits with 128 + the signal number, as a process killed by that signal would."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
