"""Where things are: the one home of the project's environment variables and folders.

Why one module: the data, cache and models folders are read by the CLI, training, evaluation,
the samples registry, the MRML logic and the tests; each used to define its own default and the
copies drifted. Every folder is resolved here, from an explicit argument first, then the
environment variable, then the default (docs/DESIGN.md §6).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import MissingFileError

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "MODELS_ENV",
    "PACKAGE_DIR",
    "RESOURCES_DIR",
    "SOURCE_ROOT",
    "cache_dir",
    "data_dir",
    "models_dir",
    "require_data_dir",
    "shipped_models_dir",
]

DATA_ENV = "NODULE_MALIGNANCY_DATA"
CACHE_ENV = "NODULE_MALIGNANCY_CACHE"
MODELS_ENV = "NODULE_MALIGNANCY_MODELS"

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The folder that holds the package: the repository in a checkout, the Slicer extension's
# ``lib/Slicer-X.Y`` in an installed extension, ``site-packages`` for a wheel.
SOURCE_ROOT = PACKAGE_DIR.parent
RESOURCES_DIR = PACKAGE_DIR / "resources"
_MANIFEST = "manifest.json"


def _from_env(explicit: str | os.PathLike | None, variable: str) -> Path | None:
    value = explicit if explicit not in (None, "") else os.environ.get(variable, "")
    return Path(value).expanduser() if value not in (None, "") else None


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The LIDC data folder: ``explicit``, else ``$NODULE_MALIGNANCY_DATA``; ``None`` if unset.

    Why: the data is never part of the repository; code finds it through this one setting.
    Existence is not checked here.
    """
    return _from_env(explicit, DATA_ENV)


def require_data_dir(explicit: str | os.PathLike | None = None, needs: str = "lidc_vois/") -> Path:
    """:func:`data_dir`, or a :class:`FileNotFoundError` that says how to set it."""
    folder = data_dir(explicit)
    if folder is None:
        raise MissingFileError(
            f"No data folder: pass --data or set {DATA_ENV} to the folder containing {needs}"
        )
    return folder


def cache_dir(subfolder: str = "") -> Path:
    """``$NODULE_MALIGNANCY_CACHE`` (default ``~/.cache/NoduleMalignancy``) / ``subfolder``.

    Not created here. One cache for decoded samples, training canvases and the like, in the
    user's home as SlicerMONAIAuto3DSeg keeps its weights (never inside a Slicer install).
    """
    root = _from_env(None, CACHE_ENV) or Path.home() / ".cache" / "NoduleMalignancy"
    return root / subfolder if subfolder else root


def shipped_models_dir() -> Path:
    """The ensemble shipped with this copy of the package.

    Looked up where each kind of install puts it: ``NoduleMalignancyLib/models`` in a wheel
    (package data), ``models/`` beside the package in the repository and in the Slicer
    extension's install tree (see NoduleMalignancy/CMakeLists.txt).
    """
    for candidate in (PACKAGE_DIR / "models", SOURCE_ROOT / "models"):
        if (candidate / _MANIFEST).is_file():
            return candidate
    return SOURCE_ROOT / "models"


def models_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The ensemble folder: ``explicit``, ``$NODULE_MALIGNANCY_MODELS``, or the shipped one."""
    return _from_env(explicit, MODELS_ENV) or shipped_models_dir()


def git_commit(repo: Path = SOURCE_ROOT) -> str | None:
    """The checked-out commit of the source tree (provenance of runs and exports); None when
    installed from a wheel or git is missing."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if out.returncode != 0:
            return None
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
