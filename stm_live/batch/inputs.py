"""Which files a batch covers: the files named, and the scan files in the folders named."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import StmLiveError

__all__ = ["DEFAULT_PATTERNS", "find_inputs"]

#: File name patterns looked for in folders (the watcher's default ``watch.patterns``).
DEFAULT_PATTERNS = ("*.sxm", "*.npy", "*.npz")


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def find_inputs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    exclude: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """The files of a batch, each once, in a stable order.

    Parameters
    ----------
    paths : iterable of path-like
        Files (taken whatever their name) and folders (searched recursively
        for names matching ``patterns``; hidden files and folders, whose
        names start with ``.``, are left out).
    patterns : sequence of str
        Shell-style name patterns, matched case-insensitively.
    exclude : path-like, optional
        A folder never searched (the batch's own output folder, whose class
        maps are ``.npy`` files too).

    Returns
    -------
    list of Path
        Absolute paths, files named first in their order, then each
        folder's matches sorted.

    Raises
    ------
    StmLiveError
        A path that does not exist.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    wanted = [p.lower() for p in patterns]
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw).resolve()
        if not path.exists():
            raise StmLiveError(f"{raw}: no such file or folder")
        if path.is_file():
            found.setdefault(path, None)
            continue
        matches = []
        for folder, dirs, files in os.walk(path):
            here = Path(folder)
            dirs[:] = [d for d in dirs if not d.startswith(".") and not _inside(here / d, skip)]
            matches += [here / name for name in files
                        if not name.startswith(".") and any(fnmatch.fnmatch(name.lower(), p) for p in wanted)]
        for match in sorted(matches):
            found.setdefault(match, None)
    return list(found)
