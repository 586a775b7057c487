"""A CT file into the scene for reading, with one error for every way it can fail.

Why one module: the browser station and the Slicer module's study panel both open a case's CT
by its path (docs/DESIGN.md §14, §15). A CT that is missing, unreadable or not a CT must give the
reader one message naming the file and the problem (a study then lets the reader skip the case)
and leave no half-loaded node in the scene.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..files.ct_input import check_image_file, check_input_path, file_identity, input_identity
from .identity import set_volume_identity
from .logic import InputError, read_ct_volume
from .slicer_api import slicer

__all__ = ["DIRECT_SUFFIXES", "CTLoadError", "load_ct_volume"]

# Extensions the IO manager reads directly; anything else (DICOM folder, archive) goes through
# the file layer's read_ct.
DIRECT_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


class CTLoadError(InputError):
    """A CT that cannot be shown; ``code``: ``missing``, ``unreadable`` or the scope layer's
    refusal (``not_ct``, ``not_3d``, ``no_tissue``, docs/DESIGN.md §12)."""


def load_ct_volume(
    path: str | Path,
    name: str | None = None,
    *,
    check_ct: bool = False,
    series_uid: str | None = None,
):
    """Load ``path`` as a scalar volume node (shown in the views); ``check_ct``: also refuse
    voxels that are not a CT the model can read (removing the node again); ``series_uid``: the
    series to read from a folder or archive holding several (else they are refused).

    The file layer's input checks run first, for the files Slicer reads directly too: a pipe, a
    truncated NIfTI or a declared size above the limit is refused (files/ct_input.py). The
    series UID, patient ID and study date read stay on the node (``mrml/identity.py``; "" for
    a file without DICOM headers).

    :raises CTLoadError: with a message that names the file and the problem.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CTLoadError(f"No CT at {path}.", code="missing")
    name = name or path.name.split(".")[0]
    try:
        check_input_path(path)
        if path.is_file() and path.name.lower().endswith(DIRECT_SUFFIXES):
            check_image_file(path)
            volume = slicer.util.loadVolume(str(path), {"name": name, "show": True})
            if volume is not None:  # a header may keep the DICOM tags (read_ct's NRRD does)
                set_volume_identity(volume, file_identity(path))
        else:
            volume = _load_through_sitk(path, name, series_uid)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CTLoadError(
            f"Cannot read the CT {path}: {_one_line(exc)}", code="unreadable"
        ) from None
    if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode"):
        _remove(volume)
        raise CTLoadError(f"Cannot read the CT {path}: no scalar volume in it.", code="unreadable")
    if check_ct:
        try:
            read_ct_volume(volume)
        except InputError as exc:
            _remove(volume)
            raise CTLoadError(
                f"{path} is not a CT to read: {exc}", code=exc.code or "not_ct"
            ) from None
    return volume


def _load_through_sitk(path: Path, name: str, series_uid: str | None = None):
    """A DICOM folder, file or archive through the file layer's reader; the series' identity
    (lost in the NRRD hand-over) is put on the node."""
    import SimpleITK as sitk

    from ..files.samples import read_ct

    image = read_ct(path, series_uid)
    target = Path(slicer.app.temporaryPath) / f"ct-{time.time_ns()}.nrrd"
    sitk.WriteImage(image, str(target))
    try:
        volume = slicer.util.loadVolume(str(target), {"name": name, "show": True})
    finally:
        target.unlink(missing_ok=True)
    if volume is not None:
        set_volume_identity(volume, input_identity(image))
    return volume


def _one_line(exc: Exception) -> str:
    """A reader error's lines as one line (the page and the skip record show one)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _remove(node) -> None:
    if node is not None and node.GetScene() is not None:
        node.GetScene().RemoveNode(node)
