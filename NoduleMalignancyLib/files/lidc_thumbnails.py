"""Thumbnails of the similar LIDC nodules (core/model/similar.py), rendered from the LIDC data.

Why here and not in the index: the index ships the nodules' names, ratings and diameters only,
never an image (the LIDC data stays outside the repository, docs/DESIGN.md §11). When the data
folder is configured (``NODULE_MALIGNANCY_DATA``, the folder holding ``lidc_vois/``, or
``lidc_vois/`` itself), a neighbour ``<patient>_R_<n>`` is the VOI ``image/<name>.nii.gz``
and its centre the world (LPS) point of ``metadata.csv`` the index embedded it at; without the
folder, or without that VOI, there is no thumbnail and the surfaces keep their text.

A thumbnail is the axial CT slice nearest the neighbour's centre in the lung window (W1500 /
L-600, the station's preset), a square of the VOI's smaller in-plane extent (21-58 mm, median
30 mm) resampled to :data:`THUMBNAIL_PX` pixels, radiological orientation (patient right on
the left, anterior up), moved inside the VOI where the centre lies off its middle (the crops
are exact sub-arrays of the CT: nothing outside them is known), with a 5 mm bar at the
bottom left. Rendered on first use and kept in memory (:func:`thumbnail` is cached per name).
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.settings import data_dir
from .csv_cells import read_csv

__all__ = [
    "BAR_MM",
    "LUNG_WINDOW",
    "THUMBNAIL_PX",
    "png_bytes",
    "thumbnail",
    "thumbnail_data_uri",
    "voi_folder",
]

log = logging.getLogger(__name__)

THUMBNAIL_PX = 96
LUNG_WINDOW = (1500.0, -600.0)  # width, level (HU): the station's lung preset
BAR_MM = 5.0
_VOIS = "lidc_vois"


def voi_folder(data: str | os.PathLike | None = None) -> Path | None:
    """The LIDC VOI folder (``metadata.csv`` + ``image/``) under the data folder (``data`` or
    ``$NODULE_MALIGNANCY_DATA``), or None when none is configured or it holds no VOIs."""
    root = data_dir(data)
    if root is None:
        return None
    for folder in (root / _VOIS, root):
        if (folder / "metadata.csv").is_file() and (folder / "image").is_dir():
            return folder
    return None


@functools.lru_cache(maxsize=4)
def _centres(folder: Path) -> dict[str, tuple[float, float, float]]:
    """Each VOI's listed world centre (LPS, mm), by ``<patient>_R_<nodule>``."""
    out = {}
    for row in read_csv(folder / "metadata.csv"):
        try:
            out[f"{row['patient_id']}_R_{row['nodule_id']}"] = (
                float(row["coordX"]),
                float(row["coordY"]),
                float(row["coordZ"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def thumbnail(
    name: str, data: str | os.PathLike | None = None, size: int = THUMBNAIL_PX
) -> np.ndarray | None:
    """The neighbour ``name``'s thumbnail, (size, size) uint8 grey, or None (no data folder,
    no such VOI, an unreadable file: logged)."""
    folder = voi_folder(data)
    if folder is None:
        return None
    return _render(folder, str(name), int(size))


@functools.lru_cache(maxsize=512)
def _render(folder: Path, name: str, size: int) -> np.ndarray | None:
    import SimpleITK as sitk

    path = folder / "image" / f"{name}.nii.gz"
    centre = _centres(folder).get(name)
    if centre is None or not path.is_file():
        return None
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        log.warning("LIDC VOI %s unreadable (%s): no thumbnail", path, exc)
        return None
    out = _axial_square(image, np.asarray(centre, float), size)
    out.flags.writeable = False  # shared by the cache
    return out


def _axial_square(image, centre: np.ndarray, size: int) -> np.ndarray:
    """The lung-windowed axial square through ``centre`` (see the module's docstring)."""
    import SimpleITK as sitk

    spacing = np.asarray(image.GetSpacing(), float)
    nx, ny, nz = image.GetSize()
    extent = np.array([nx, ny], float) * spacing[:2]
    # The VOI's bounds in world x/y (its voxels' outer edges), whatever its axes' signs; the
    # square's side is its smaller in-plane extent.
    world = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint((i, j, 0.0))
            for i in (-0.5, nx - 0.5)
            for j in (-0.5, ny - 0.5)
        ]
    )
    lo, hi = world[:, :2].min(axis=0), world[:, :2].max(axis=0)
    side = float(min(extent[0], extent[1]))
    start = np.clip(centre[:2] - side / 2, lo, np.maximum(lo, hi - side))
    # The slice nearest the centre (no blend of two slices 2.5 mm apart).
    k = image.TransformPhysicalPointToContinuousIndex(tuple(map(float, centre)))[2]
    k = int(np.clip(round(k), 0, nz - 1))
    z = float(image.TransformIndexToPhysicalPoint((0, 0, k))[2])
    pixel = side / size
    reference = sitk.Image(size, size, 1, sitk.sitkFloat32)
    reference.SetSpacing((pixel, pixel, float(spacing[2])))
    reference.SetOrigin((start[0] + pixel / 2, start[1] + pixel / 2, z))
    hu = sitk.Resample(
        image, reference, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32
    )
    plane = sitk.GetArrayFromImage(hu)[0]  # rows: +y (posterior) down; columns: +x (left) right
    width, level = LUNG_WINDOW
    grey = np.clip((plane - (level - width / 2)) / width, 0.0, 1.0)
    out = np.round(255 * grey).astype(np.uint8)
    bar = int(round(BAR_MM / pixel))
    margin = max(2, size // 16)
    if bar + margin + 1 < size:  # white on a black edge: legible on lung and on soft tissue
        out[size - margin - 3 : size - margin + 1, margin - 1 : margin + bar + 1] = 0
        out[size - margin - 2 : size - margin, margin : margin + bar] = 255
    return out


def png_bytes(grey: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of ``grey`` (H, W) uint8 (zlib only: no imaging library)."""
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    h, w = grey.shape
    raw = b"".join(b"\x00" + grey[r].tobytes() for r in range(h))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=512)
def _data_uri(folder: Path, name: str, size: int) -> str:
    grey = _render(folder, name, size)
    if grey is None:
        return ""
    return "data:image/png;base64," + base64.b64encode(png_bytes(grey)).decode("ascii")


def thumbnail_data_uri(
    name: str, data: str | os.PathLike | None = None, size: int = THUMBNAIL_PX
) -> str:
    """The thumbnail as a ``data:image/png;base64,...`` address for a page, "" without one."""
    folder = voi_folder(data)
    return "" if folder is None else _data_uri(folder, str(name), int(size))
