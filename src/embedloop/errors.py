"""Errors the on-call engineer sees as one line. Anything else is a bug."""

from __future__ import annotations


def one_line(message: object) -> str:
    """A message from pandas, pyarrow or an HTTP client may span lines; the answer is one."""
    text = " ".join(str(message).split())
    return text or (type(message).__name__ if isinstance(message, BaseException) else "")


class EmbedloopError(Exception):
    """Base class: the message is the whole story, printed without a traceback."""


class ConfigError(EmbedloopError):
    pass


class InputError(EmbedloopError):
    """Logs or corpus that cannot be read or are unusable as a whole."""


class BatchRejected(EmbedloopError):
    """A batch-level expectation failed: the run stops before training."""


class CorpusInvalid(EmbedloopError):
    pass


class IndexUnavailable(EmbedloopError):
    """The live index is missing, damaged or was built by another model."""


class RegistryError(EmbedloopError):
    pass


class Refused(EmbedloopError):
    """Nothing is wrong: the request was declined and nothing changed (another run holds
    the lock, nothing to roll back to). Not a failure: no alert; exit code 3."""


class RunInProgress(Refused):
    pass


class NothingToRollBack(Refused, RegistryError):
    pass


class CheckpointError(EmbedloopError):
    """A model folder that cannot be loaded (truncated, corrupt, incomplete)."""


class RecordingFailed(EmbedloopError):
    """Production changed as decided, but writing the run's record (MLflow, ledger) failed
    afterwards: the message says what is live, so nobody undoes a promotion that worked."""
