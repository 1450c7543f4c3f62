"""The exceptions stm-live raises on purpose.

Every error derives from :class:`StmLiveError` *and* from the builtin that
matches its meaning (``ValueError``, ``OSError``, ...), so callers can catch
either the package-wide base or the familiar builtin. Messages are written for
the person at the microscope: they name the file, key or field, the bad value
and what was expected.
"""

from __future__ import annotations

__all__ = [
    "AdaptError",
    "ConfigError",
    "ControllerConnectionError",
    "ControllerError",
    "DecisionError",
    "LabelError",
    "ModelError",
    "ScanReadError",
    "StmLiveError",
    "WireError",
]


class StmLiveError(Exception):
    """Base class of every error stm-live raises deliberately."""


class ConfigError(StmLiveError, ValueError):
    """The configuration (file, environment or command line) is invalid."""


class ScanReadError(StmLiveError, ValueError):
    """A scan file or array cannot be read: truncated, corrupt, or not a scan.

    The message always starts with the path of the offending input.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(StmLiveError, ValueError):
    """A model file is missing, unreadable or lacks the metadata stm-live needs."""


class AdaptError(StmLiveError, ValueError):
    """The labels given for adaptation cannot make prototypes (a class without examples, ...)."""


class LabelError(StmLiveError, ValueError):
    """A file of hand labels (``eval/real/*.json``) is unreadable or inconsistent."""


class WireError(StmLiveError, ValueError):
    """A ZeroMQ message does not follow the stm-live protocol."""


class ControllerError(StmLiveError, RuntimeError):
    """A microscope controller refused a command, broke the protocol, or could not be reached.

    The message names the controller (host:port), the command and what went wrong.
    """


class ControllerConnectionError(ControllerError, ConnectionError):
    """The connection to the controller failed, timed out or was closed mid-message."""


class DecisionError(StmLiveError, ValueError):
    """A decision rule or a decision message is invalid."""
