"""Python packages the module needs: what is missing, and installing it inside Slicer.

Why here and not in the module file: the check is plain Python (no Qt, no import of the
packages themselves, so it is fast and safe before they exist) and is tested headless; only
the installer needs Slicer.

Policy (as SlicerTotalSegmentator / SlicerMONAIAuto3DSeg do):

* torch is installed through SlicerPyTorch's ``PyTorchUtilsLogic().installTorch`` when that
  extension is present (it picks the CUDA/CPU wheel matching the driver), otherwise with
  ``slicer.util.pip_install``;
* packages Slicer bundles (numpy, SimpleITK) are never reinstalled: if they are missing or too
  old the Slicer installation is broken and we say so;
* nothing is installed without the caller's ``confirm`` callback saying yes (the widget asks
  the user); outside Slicer nothing is installed at all: :class:`PlainPythonInstaller` reports
  the ``pip install`` command to run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core import errors
from .runtime import inside_slicer

__all__ = [
    "REQUIREMENTS",
    "DependencyError",
    "MissingRequirement",
    "PlainPythonInstaller",
    "Requirement",
    "SlicerInstaller",
    "default_installer",
    "describe_missing",
    "ensure_dependencies",
    "inside_slicer",
    "missing_requirements",
]


@dataclass(frozen=True)
class Requirement:
    """One package: import name, pip name, minimum version, and whether Slicer ships it."""

    module: str
    distribution: str
    minimum: str
    bundled_with_slicer: bool
    purpose: str

    @property
    def pip_spec(self) -> str:
        return f"{self.distribution}>={self.minimum}"


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch", "2.4", False, "runs the ensemble (CPU or CUDA)"),
    Requirement("numpy", "numpy", "1.26", True, "arrays"),
    Requirement("SimpleITK", "SimpleITK", "2.3", True, "connected components, CT reading"),
    Requirement("threadpoolctl", "threadpoolctl", "3.1", False, "numpy's BLAS off torch's cores"),
    Requirement("highdicom", "highdicom", "0.23", False, "DICOM SEG and SR export for PACS"),
)


@dataclass(frozen=True)
class MissingRequirement:
    requirement: Requirement
    installed_version: str | None  # None: not importable at all

    @property
    def reason(self) -> str:
        r = self.requirement
        if self.installed_version is None:
            return f"{r.module} is not installed ({r.purpose})"
        return f"{r.module} {self.installed_version} is older than {r.minimum} ({r.purpose})"


class DependencyError(errors.DependencyError):
    """Required packages are missing and were not (or could not be) installed."""


def _version_tuple(text: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", text.split("+", 1)[0])[:3]
    return tuple(int(n) for n in numbers)


def _installed_version(requirement: Requirement) -> str | None:
    if importlib.util.find_spec(requirement.module) is None:
        return None
    try:
        return importlib.metadata.version(requirement.distribution)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(requirement.module)
        return str(getattr(module, "__version__", "0")) if module is not None else "0"


def missing_requirements(
    requirements: Sequence[Requirement] = REQUIREMENTS,
) -> list[MissingRequirement]:
    """The requirements that are absent or too old (nothing is imported to find out)."""
    missing = []
    for requirement in requirements:
        version = _installed_version(requirement)
        if version is None or _version_tuple(version) < _version_tuple(requirement.minimum):
            missing.append(MissingRequirement(requirement, version))
    return missing


def describe_missing(missing: Sequence[MissingRequirement]) -> str:
    """A message for users: what is missing and how it would be installed."""
    if not missing:
        return "All required Python packages are installed."
    lines = ["NoduleMalignancy needs Python packages that are missing:"]
    lines += [f"  - {m.reason}" for m in missing]
    installable = [m.requirement for m in missing if not m.requirement.bundled_with_slicer]
    bundled = [m.requirement for m in missing if m.requirement.bundled_with_slicer]
    if installable:
        lines.append(
            "To install: "
            + " ".join(r.pip_spec for r in installable)
            + " (inside Slicer: torch through the PyTorch extension when it is installed; "
            "outside Slicer: python -m pip install "
            + " ".join(f'"{r.pip_spec}"' for r in installable)
            + ")."
        )
    if bundled:
        lines.append(
            "Bundled with Slicer and never reinstalled by this module: "
            + ", ".join(r.module for r in bundled)
            + " (a missing one means a damaged Slicer installation; outside Slicer install "
            "them with pip)."
        )
    return "\n".join(lines)


class PlainPythonInstaller:
    """Outside Slicer: never installs into someone's environment; raises with the command."""

    def install(self, missing: Sequence[MissingRequirement]) -> None:
        raise DependencyError(describe_missing(missing))


class SlicerInstaller:
    """Inside Slicer: torch via SlicerPyTorch (or pip), never the packages Slicer bundles."""

    def install(self, missing: Sequence[MissingRequirement]) -> None:
        bundled = [m for m in missing if m.requirement.bundled_with_slicer]
        if bundled:
            raise DependencyError(
                describe_missing(bundled)
                + "\nReinstall Slicer; this module does not replace packages Slicer ships."
            )
        import slicer

        for item in missing:
            requirement = item.requirement
            if requirement.module == "torch":
                self._install_torch(requirement)
            else:
                slicer.util.pip_install(requirement.pip_spec)

    @staticmethod
    def _install_torch(requirement: Requirement) -> None:
        import slicer

        try:
            import PyTorchUtils  # the SlicerPyTorch extension (EXTENSION_DEPENDS PyTorch)
        except ImportError:
            slicer.util.pip_install(requirement.pip_spec)
            return
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=f">={requirement.minimum}"
        )
        if torch is None:
            raise DependencyError("PyTorch was not installed (PyTorchUtils returned nothing).")


def default_installer() -> SlicerInstaller | PlainPythonInstaller:
    return SlicerInstaller() if inside_slicer() else PlainPythonInstaller()


def ensure_dependencies(
    confirm: Callable[[str], bool] | None = None,
    installer: SlicerInstaller | PlainPythonInstaller | None = None,
    requirements: Sequence[Requirement] = REQUIREMENTS,
) -> list[MissingRequirement]:
    """Install what is missing, after ``confirm(message)`` agrees; returns what was missing.

    :raises DependencyError: the user declined, installation failed, or (outside Slicer)
        something is missing: the message says what to install.
    """
    missing = missing_requirements(requirements)
    if not missing:
        return []
    installer = installer or default_installer()
    if isinstance(installer, SlicerInstaller):
        message = describe_missing(missing) + "\n\nInstall now? This can take several minutes."
        if confirm is None or not confirm(message):
            raise DependencyError(
                "Installation of the required packages was declined:\n" + describe_missing(missing)
            )
    installer.install(missing)
    importlib.invalidate_caches()
    still = missing_requirements(requirements)
    if still:
        raise DependencyError(
            "Installation finished but packages are still missing:\n" + describe_missing(still)
        )
    return missing
