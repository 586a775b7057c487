"""``slicer`` and ``vtk`` for the MRML layer's modules, or the error that names the extra.

Why: outside the Slicer application the MRML layer runs on slicer-core (the ``slicer`` extra).
Without it, the ``import slicer`` at the top of the logic, the node writers or the CT loader was
a bare ``ModuleNotFoundError``, which the CLI reports as a bug (exit 1, a traceback); here it is
the :class:`~..core.errors.DependencyError` that says what to install (exit 2). The MRML
modules import ``slicer``, ``vtk`` and vtk's numpy bridge from here.
"""

from __future__ import annotations

from ..core.extras import require_extra

require_extra("slicer", "slicer", "vtk")  # finds the modules without importing them

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

__all__ = ["numpy_support", "slicer", "vtk"]
