"""Outputs checked before work: a folder or file that cannot be written is refused up front.

Why: ``predict --out`` into a folder that could not be written computed every row and then
lost them all; an unwritable ``--masks-dir`` failed every row (issue 28 finding 5). Every
command checks its outputs before its first row (docs/DESIGN.md §13), by writing and removing
a probe file, which also catches what permission bits do not tell (a read-only mount, an
immutable folder, a full disk, a file where a folder must be). Results that still cannot be
written at the end go to :func:`fallback_path` with a message, never nowhere.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from ..core.errors import InputError

__all__ = ["check_output_file", "check_output_folder", "fallback_path"]


def _probe(folder: Path, what: str, target: Path) -> None:
    """Make ``folder`` (and missing parents), write and remove a probe file in it, then remove
    the folders made here again: a check leaves nothing behind (the writer makes them)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(
            f"{what} {target} cannot be written ({reason}); nothing was computed: choose a "
            "writable place"
        ) from None
    finally:
        for path in made:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """The folder ``path`` (created if absent) after a probe file was written and removed in
    it; ``InputError`` naming ``what`` (the flag) otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder; nothing was computed")
    _probe(path, what, path)
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """A file the command will write (atomically, beside itself): its folder must take a new
    file and the path must not be a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name; nothing was computed")
    _probe(path.parent, what, path)
    return path


def fallback_path(path: str | os.PathLike) -> Path:
    """Where results go when ``path`` could not be written after all (the system's temporary
    folder, named after the file, the process and the time)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"{path.stem}-unsaved-{os.getpid()}-{stamp}{path.suffix}"
