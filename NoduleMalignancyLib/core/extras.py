"""Which extra of the package an application needs, named when it is missing.

Why: the wheel's own dependencies cover the core (``predict``, ``analyze``, training); each
application with heavier needs (a Dask cluster, DICOM outputs, the LIDC export, the Slicer
layer outside Slicer, the browser station) has an extra in ``pyproject.toml``. Without it, a
bare ``No module named 'distributed'`` does not say what to install; this does
(docs/DESIGN.md §9).
"""

from __future__ import annotations

import importlib.util
import sys

from .errors import DependencyError

__all__ = ["DISTRIBUTION", "require_extra"]

DISTRIBUTION = "NoduleMalignancyLib"


def _installed(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(extra: str, *modules: str) -> None:
    """Raise :class:`DependencyError` naming ``extra`` when one of ``modules`` (import names,
    e.g. ``"distributed"``) is not installed; nothing is imported to find out.

    Use it before an application's imports (in a function), or in the ``except
    ModuleNotFoundError`` of a module-level import followed by ``raise``.
    """
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise DependencyError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: this "
            f"needs the '{extra}' extra: python -m pip install '{DISTRIBUTION}[{extra}]' (a "
            "checkout's `make` installs every extra from requirements.txt)"
        )
