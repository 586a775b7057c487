"""The project's expected errors: one base class, so a caller can tell bad input from a bug.

Why: every surface answers an expected error (a refused input, missing weights, a study in the
wrong state, a missing package) with its message and an input-error exit (the CLI: 2), and
anything else with its traceback (the CLI: 1), because anything else is a bug to report.
Each category also keeps the built-in base its callers already catch (``ValueError`` for bad
input, ``RuntimeError`` for the environment). docs/DESIGN.md §12 (refusal codes).
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "CancelledError",
    "DependencyError",
    "InputError",
    "MissingFileError",
    "NoduleMalignancyError",
    "OutputExistsError",
    "StudyError",
    "WeightsError",
    "is_expected",
]


class NoduleMalignancyError(Exception):
    """An error the project expects and explains: its message says what is wrong and what to
    do. ``code`` names the scope layer's refusal (core/scope/validation.py) where there is one."""

    code: str | None = None


class InputError(NoduleMalignancyError, ValueError):
    """The input (a CT, a point, a manifest, a table, an argument, an output path) cannot be
    used; nothing was written. ``code``: the refusal code when the scope layer refused it."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the request names or needs does not exist; the message says which and
    what makes it."""


class OutputExistsError(InputError, FileExistsError):
    """The output already exists and is never overwritten."""


class AccessDeniedError(NoduleMalignancyError, PermissionError):
    """A token that does not grant the request (a study's owner or reader token)."""


class WeightsError(NoduleMalignancyError, RuntimeError):
    """The ensemble's weights are missing, corrupt or do not match the manifest."""


class StudyError(NoduleMalignancyError, ValueError):
    """A reading study refuses the request in its present state (washout, finished session)."""


class DependencyError(NoduleMalignancyError, RuntimeError):
    """A package the requested path needs is missing or too old; the message names it."""


class CancelledError(NoduleMalignancyError, RuntimeError):
    """The user cancelled the run; nothing was changed."""


def is_expected(exc: BaseException) -> bool:
    """Bad input, not a bug: the project's errors, and the system naming a file it cannot use
    (missing, no permission, disk full: an ``OSError`` with its file name)."""
    return isinstance(exc, NoduleMalignancyError) or (
        isinstance(exc, OSError) and exc.filename is not None
    )
