"""The daemon's hold on its results folder: the lock, and the state file ``stm-live status`` reads."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

from ..errors import ConfigError
from ..publish.store import atomic_write

__all__ = ["STATE_FILE", "ResultsLock", "read_state", "utc", "write_state"]

log = logging.getLogger("stm_live.daemon")

#: Name of the state file in ``results.dir`` (what ``stm-live status`` reads).
STATE_FILE: Final = "state.json"


def utc(t: float) -> str:
    """Unix seconds as ISO 8601 UTC, to the second."""
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_state(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The daemon's state file in ``results_dir`` (what ``stm-live status`` shows).

    Raises
    ------
    FileNotFoundError
        No daemon has run with this results folder.
    ValueError
        The file is not a JSON object.
    """
    path = Path(results_dir) / STATE_FILE
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return state


def write_state(results_dir: Path, doc: Mapping[str, Any]) -> None:
    """Replace the state file atomically (not fsynced: it is rewritten every heartbeat); log a failure."""
    text = json.dumps(doc, indent=1).encode() + b"\n"
    try:
        atomic_write(results_dir / STATE_FILE, lambda fh: fh.write(text), fsync=False)
    except OSError as exc:
        log.warning("cannot write the state file in %s: %s", results_dir, exc)


class ResultsLock:
    """An exclusive lock on the results folder: one daemon owns it (released by the OS if the process dies)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "daemon.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises
        ------
        ConfigError
            Another daemon holds it (its pid is in the message).
        """
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the daemon's life
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; one daemon per folder is up to the operator
            self._fh = fh
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(
                f"results.dir {self.path.parent} is in use by another stm-live daemon (pid {owner}); "
                "give each daemon its own results folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        """Let go of the lock."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
