"""Named sample CTs (public LIDC-IDRI cases) and a general CT reader.

Why: the demo, the self-tests and the end-to-end tests need real chest CTs with reader-marked
nodules, found the same way on every machine, verified bit for bit, and never downloaded.

* :data:`SAMPLES` names the cases, their public source (TCIA, LIDC-IDRI, CC BY 3.0), DICOM UIDs
  and the sha256 of their decoded voxels (int16, (z, y, x), C order).
* A local copy is found through the data folder (``NODULE_MALIGNANCY_DATA`` or ``data_dir=``):
  ``<data>/lidc_ct/<name>.tar.gz`` (DICOM series + reader XML, as shipped), a DICOM folder
  ``<data>/lidc_ct/<name>/`` or an image file ``<data>/lidc_ct/<name>.nrrd|.mha|.nii.gz``.
* :func:`sample_path` decodes that copy once, verifies the checksum and caches it as
  ``<cache>/<name>.nrrd`` (cache: ``$NODULE_MALIGNANCY_CACHE/samples``, default
  ``~/.cache/NoduleMalignancy/samples``); later calls return the cached file without decoding.
* :func:`read_ct` reads a CT from an image file, a DICOM folder or a ``.tar.gz`` of DICOM;
  :func:`read_ct_with_dicom` also returns the series' DICOM headers, slice by slice, which the
  DICOM outputs (SEG, SR) reference.

Coordinates: points are world LPS (ITK / LIDC / LUNA convention), as their names say.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.atomic import atomic_path
from ..core.errors import InputError, NoduleMalignancyError
from ..core.extras import require_extra
from ..core.settings import DATA_ENV, cache_dir
from ..core.settings import data_dir as configured_data_dir
from .ct_input import (
    SeriesInfo,
    check_image_file,
    check_input_path,
    check_series_size,
    choose_series,
    extracted_archive,
)

__all__ = [
    "SAMPLES",
    "SampleRecord",
    "SampleNotFoundError",
    "SampleChecksumError",
    "nodule_points_lps",
    "read_ct",
    "read_ct_with_dicom",
    "read_dicom_instances",
    "is_dicom_source",
    "dicom_series_files",
    "reader_xml_path",
    "sample_path",
    "samples_cache_dir",
    "voxel_sha256",
]


# Sub-folder of the data folder that holds complete CTs, and the points file beside them.
CT_SUBFOLDER = "lidc_ct"
POINTS_FILE = "nodule_locations_world_LPS.json"

_LIDC_SOURCE = "The Cancer Imaging Archive (TCIA), LIDC-IDRI collection"
_LIDC_DOI = "10.7937/K9/TCIA.2015.LO9QL9SX"
_LIDC_LICENSE = "CC BY 3.0"
_LIDC_CITATION = (
    "Armato SG III et al., The Lung Image Database Consortium (LIDC) and Image Database "
    "Resource Initiative (IDRI): a completed reference database of lung nodules on CT scans, "
    "Medical Physics 38(2):915-931, 2011"
)

# DICOM tags copied from the first slice of a series onto the image (ITK's "gggg|eeee" keys).
_DICOM_TAGS = {
    "0010|0020": "PatientID",
    "0020|000d": "StudyInstanceUID",
    "0020|000e": "SeriesInstanceUID",
    "0008|0060": "Modality",
    "0008|103e": "SeriesDescription",
    "0008|0020": "StudyDate",
}

_IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii.gz", ".nii")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class SampleRecord:
    """One named sample CT: where it comes from and how to recognise it."""

    name: str
    archive: str  # file name of the shipped copy in <data>/lidc_ct/
    study_instance_uid: str
    series_instance_uid: str
    voxel_sha256: str  # sha256 of the int16 (z, y, x) C-order voxel array
    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    reader_xml: str  # the LIDC reader annotation XML inside the archive
    description: str
    source: str = _LIDC_SOURCE
    doi: str = _LIDC_DOI
    license: str = _LIDC_LICENSE
    citation: str = _LIDC_CITATION

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size_xyz[2], self.size_xyz[1], self.size_xyz[0])


SAMPLES: dict[str, SampleRecord] = {
    r.name: r
    for r in (
        SampleRecord(
            name="LIDC-IDRI-0001",
            archive="LIDC-IDRI-0001.tar.gz",
            study_instance_uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178",
            series_instance_uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192",
            voxel_sha256="36e9ad75d5865222ea1f4dbf036b20e68cad48ad04fd485e3344a12379333a1e",
            size_xyz=(512, 512, 133),
            spacing_xyz=(0.703125, 0.703125, 2.5),
            reader_xml="069.xml",
            description=(
                "Chest CT, 133 axial slices, GE scanner; one nodule (about 23 mm) rated highly "
                "suspicious by 4 readers."
            ),
        ),
        SampleRecord(
            name="LIDC-IDRI-0006",
            archive="LIDC-IDRI-0006.tar.gz",
            study_instance_uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.324680252006411183918098592500",
            series_instance_uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.132817748896065918417924920957",
            voxel_sha256="3cb8e01f5f45891f93938b5be83142caa44bcdef8ed421154ed0cb92f23d0554",
            size_xyz=(512, 512, 133),
            spacing_xyz=(0.625, 0.625, 2.5),
            reader_xml="078.xml",
            description="Chest CT, 133 axial slices; four nodule clusters marked by readers.",
        ),
    )
}


class SampleNotFoundError(NoduleMalignancyError, RuntimeError):
    """No cached copy and no local copy of a sample: the message says what to set."""


class SampleChecksumError(NoduleMalignancyError, RuntimeError):
    """A local copy of a sample decodes to voxels other than the registered ones."""


def samples_cache_dir() -> Path:
    """Where decoded samples are kept (``<cache>/samples``); not created here."""
    return cache_dir("samples")


# Samples -------------------------------------------------------------------------------------
def _record(name: str) -> SampleRecord:
    try:
        return SAMPLES[name]
    except KeyError:
        known = ", ".join(sorted(SAMPLES))
        raise InputError(f"unknown sample {name!r}; known samples: {known}") from None


def _how_to_provide(record: SampleRecord) -> str:
    return (
        f"set {DATA_ENV} (or pass data_dir=) to a folder containing "
        f"{CT_SUBFOLDER}/{record.archive} (the LIDC-IDRI DICOM series "
        f"{record.series_instance_uid} of patient {record.name}, from {record.source}, "
        f"DOI {record.doi}, licence {record.license}); a DICOM folder "
        f"{CT_SUBFOLDER}/{record.name}/ or an image {CT_SUBFOLDER}/{record.name}.nrrd|.mha|"
        f".nii.gz works too. Nothing is downloaded."
    )


def _local_copy(record: SampleRecord, root: Path) -> Path | None:
    """The first local copy of a sample under ``root`` (fastest to decode first)."""
    for base in (root / CT_SUBFOLDER, root):
        candidates = [base / f"{record.name}{suffix}" for suffix in _IMAGE_SUFFIXES]
        candidates += [base / record.name, base / record.archive]
        for path in candidates:
            if path.is_dir() or path.is_file():
                return path
    return None


def _stamp_path(cache: Path, name: str) -> Path:
    return cache / f"{name}.json"


def _read_stamp(cache: Path, name: str) -> dict | None:
    try:
        return json.loads(_stamp_path(cache, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sample_path(name: str, data_dir: str | Path | None = None) -> Path:
    """Path of the cached, checksum-verified NRRD of sample ``name``; seeds the cache if needed.

    Why: one decode per machine (DICOM decoding takes seconds), bit-identical voxels everywhere.
    A cache entry counts only with its stamp (written last, after verification), so a second
    call returns at once without decoding. Raises :class:`SampleNotFoundError` when the sample
    is neither cached nor found under the data folder, :class:`SampleChecksumError` when the
    local copy does not decode to the registered voxels.
    """
    record = _record(name)
    cache = samples_cache_dir()
    target = cache / f"{name}.nrrd"
    stamp = _read_stamp(cache, name)
    if target.is_file() and stamp and stamp.get("voxel_sha256") == record.voxel_sha256:
        return target

    root = configured_data_dir(data_dir)
    if root is None:
        raise SampleNotFoundError(
            f"sample {name!r} is not cached in {cache} and no data folder is configured: "
            + _how_to_provide(record)
        )
    if not root.is_dir():
        raise SampleNotFoundError(
            f"sample {name!r}: the data folder {root} does not exist: " + _how_to_provide(record)
        )
    source = _local_copy(record, root)
    if source is None:
        raise SampleNotFoundError(
            f"sample {name!r}: no local copy under {root}: " + _how_to_provide(record)
        )
    _seed(record, source, cache, root)
    return target


def _seed(record: SampleRecord, source: Path, cache: Path, root: Path) -> None:
    """Decode ``source``, verify it, and write ``<name>.nrrd``, ``.xml`` and the stamp."""
    image, xml_files = _read_ct_with_xml(source)
    image = _as_int16(image, source)
    digest = voxel_sha256(image)
    if digest != record.voxel_sha256:
        raise SampleChecksumError(
            f"sample {record.name!r}: {source} decodes to voxels with sha256 {digest}, expected "
            f"{record.voxel_sha256} (int16 (z, y, x) array of series "
            f"{record.series_instance_uid}); the local copy is corrupt or another scan. "
            f"Replace it with the original {record.archive}."
        )
    for key, value in (
        ("0020|000d", record.study_instance_uid),
        ("0020|000e", record.series_instance_uid),
        ("0010|0020", record.name),
    ):
        if not image.HasMetaDataKey(key):
            image.SetMetaData(key, value)

    cache.mkdir(parents=True, exist_ok=True)
    _atomic_write_image(image, cache / f"{record.name}.nrrd")
    xml_name = None
    if xml_files:
        # LIDC ships one reader XML per series; keep the registered one when there are several.
        chosen = xml_files.get(record.reader_xml) or next(iter(xml_files.values()))
        xml_name = f"{record.name}.xml"
        _atomic_write_bytes(chosen, cache / xml_name)
    points = _points_from_file(root, record.name)
    stamp = {
        "name": record.name,
        "voxel_sha256": digest,
        "series_instance_uid": record.series_instance_uid,
        "source": str(source),
        "reader_xml": xml_name,
        "nodule_points_lps": points,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write_bytes(
        json.dumps(stamp, indent=1).encode("utf-8"), _stamp_path(cache, record.name)
    )


def _atomic_write_image(image: sitk.Image, target: Path) -> None:
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def _atomic_write_bytes(data: bytes, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def reader_xml_path(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The cached LIDC reader XML of a sample (seeding the sample if needed), or ``None``."""
    path = sample_path(name, data_dir=data_dir)
    xml = path.with_suffix(".xml")
    return xml if xml.is_file() else None


def voxel_sha256(image: sitk.Image | np.ndarray) -> str:
    """sha256 of the voxels as an int16 (z, y, x) C-order array (the registry's checksum).

    Why: a checksum of decoded voxels is independent of file format and compression.
    Raises ``ValueError`` when the voxels do not fit int16 exactly.
    """
    array = sitk.GetArrayViewFromImage(image) if isinstance(image, sitk.Image) else image
    array = np.asarray(array)
    if array.dtype != np.int16:
        if not _fits_int16(array):
            raise InputError(
                f"voxels of dtype {array.dtype} are not exactly representable as int16"
            )
        array = array.astype(np.int16)
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _fits_int16(array: np.ndarray) -> bool:
    if array.size == 0:
        return True
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return False
    lo, hi = array.min(), array.max()
    if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max:
        return False
    return bool(np.issubdtype(array.dtype, np.integer) or np.all(np.mod(array, 1) == 0))


def _as_int16(image: sitk.Image, source: Path) -> sitk.Image:
    """The image as int16 when that is exact (CT HU); otherwise a checksum error."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SampleChecksumError(f"{source} is not a scalar image; a CT has one value per voxel")
    if image.GetPixelID() == sitk.sitkInt16:
        return image
    if not _fits_int16(sitk.GetArrayViewFromImage(image)):
        raise SampleChecksumError(
            f"{source} has voxels that are not int16 HU ({image.GetPixelIDTypeAsString()}); "
            "it is not the registered scan"
        )
    out = sitk.Cast(image, sitk.sitkInt16)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


# Nodule points -------------------------------------------------------------------------------
def _points_from_file(root: Path | None, name: str) -> list | None:
    if root is None:
        return None
    for path in (root / CT_SUBFOLDER / POINTS_FILE, root / POINTS_FILE):
        if path.is_file():
            content = json.loads(path.read_text(encoding="utf-8"))
            entry = content.get(name)
            if entry is None:
                return None
            if entry.get("type") != "Multiple points" or "points" not in entry:
                raise InputError(f"{path}: entry {name!r} is not a LUNA25 'Multiple points' list")
            return [
                [str(p.get("name", f"{name}_n{i}")), [float(c) for c in p["point"]]]
                for i, p in enumerate(entry["points"])
            ]
    return None


def nodule_points_lps(
    name: str, data_dir: str | Path | None = None
) -> list[tuple[str, tuple[float, float, float]]]:
    """The readers' nodule points of a sample: ``[(point name, (x, y, z) world LPS mm), ...]``.

    Why: the demo and tests place a point on a real nodule. Read from
    ``<data>/lidc_ct/nodule_locations_world_LPS.json`` (LUNA25 "Multiple points" layout; one
    point per nodule cluster, the mean of the readers' centroids), or from the copy stored with
    the cached sample when no data folder is configured.
    """
    record = _record(name)
    root = configured_data_dir(data_dir)
    points = _points_from_file(root, name) if root is not None else None
    if points is None:
        stamp = _read_stamp(samples_cache_dir(), name)
        points = stamp.get("nodule_points_lps") if stamp else None
    if points is None:
        raise SampleNotFoundError(
            f"no nodule points for sample {name!r}: expected {CT_SUBFOLDER}/{POINTS_FILE} in the "
            f"data folder ({root if root is not None else 'not configured'}); "
            + _how_to_provide(record)
        )
    return [(str(n), (float(p[0]), float(p[1]), float(p[2]))) for n, p in points]


# Reading CTs ---------------------------------------------------------------------------------
def read_ct(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a CT as a SimpleITK image from a file, a DICOM series folder or a DICOM ``.tar.gz``.

    Why: the CLI and the batch tools take whatever a user has. A folder is searched
    recursively; it must hold one series, or ``series_uid`` names the one to read (several
    are refused with their list, files/ct_input.py: file order must not decide). The input
    is checked before voxels are read (a pipe, a truncated NIfTI, a size above the limit are
    refused: files/ct_input.py). Pixel type is what
    SimpleITK gives (GDCM returns rescaled CT as int32). Selected DICOM tags (patient ID,
    study/series UIDs, modality, series description) are copied onto the image's metadata.
    Raises ``ValueError`` naming the path when nothing readable is there.
    """
    image, _ = _read_ct_with_xml(Path(path), want_xml=False, series_uid=series_uid)
    return image


def dicom_series_files(path: str | Path, series_uid: str | None = None) -> tuple[str, ...]:
    """The DICOM files of the series :func:`read_ct` reads from a folder or a ``.dcm`` file,
    sorted as the volume's slices (slice k of the image is file k).

    Why: outputs for PACS (DICOM SEG and SR) must reference the source instances; an archive's
    files exist only while it is extracted, so for archives use :func:`read_ct_with_dicom`.
    Raises ``ValueError`` when there is no DICOM series.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _one_series(path, series_uid).files
    if path.is_file() and path.name.lower().endswith((".dcm", ".ima")):
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"cannot read a CT from {path}: {_first_line(exc)}") from None
        uid = reader.GetMetaData("0020|000e") if reader.HasMetaDataKey("0020|000e") else ""
        return _file_series(path, uid)
    raise InputError(f"{path} is not a DICOM folder or file")


def is_dicom_source(path: str | Path) -> bool:
    """Whether :func:`read_ct` reads ``path`` as DICOM (a folder, an archive, a ``.dcm``)."""
    path = Path(path).expanduser()
    lower = path.name.lower()
    return path.is_dir() or lower.endswith((*_ARCHIVE_SUFFIXES, ".dcm", ".ima"))


def read_ct_with_dicom(
    path: str | Path, series_uid: str | None = None
) -> tuple[sitk.Image, list | None]:
    """:func:`read_ct`, plus the series' DICOM headers (pydicom datasets without pixel data,
    in slice order) when the CT is DICOM; ``None`` for other files.

    Why headers, not paths: an archive is extracted to a temporary folder that is gone when
    this returns; the headers are all that SEG and SR need (docs/DESIGN.md §16).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"cannot read a CT from {path}: no such file or folder")
    if not is_dicom_source(path):
        return read_ct(path, series_uid), None
    if path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        with extracted_archive(path) as folder:
            try:
                files = dicom_series_files(folder, series_uid)
            except ValueError as exc:
                raise InputError(f"cannot read a CT from {path}: {exc}") from None
            return _read_series(files, str(path)), _dicom_headers(files)
    files = dicom_series_files(path, series_uid)
    return _read_series(files, str(path)), _dicom_headers(files)


def read_dicom_instances(files) -> tuple[sitk.Image, list]:
    """A CT from a list of DICOM files in any order (e.g. the instances a DICOM database holds
    for a loaded volume), and its headers in slice order.

    The files of the series with the most instances are sorted along the slice normal, as GDCM
    sorts a folder; raises :class:`InputError` (a ``ValueError``) when none is DICOM.
    """
    require_extra("dicom", "pydicom")
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except (InvalidDicomError, OSError) as exc:
            raise InputError(f"cannot read DICOM file {f}: {exc}") from None
    if not headers:
        raise InputError("no DICOM files given")
    series = [h.get("SeriesInstanceUID", "") for h in headers]
    uid = max(set(series), key=series.count)
    headers = [h for h in headers if h.get("SeriesInstanceUID", "") == uid]
    row, col = (
        np.asarray(v, dtype=float) for v in np.reshape(headers[0].ImageOrientationPatient, (2, 3))
    )
    normal = np.cross(row, col)
    headers.sort(
        key=lambda h: float(np.dot(normal, np.asarray(h.ImagePositionPatient, dtype=float)))
    )
    return _read_series([h.filename for h in headers], f"{len(headers)} DICOM files"), headers


def _dicom_headers(files) -> list:
    require_extra("dicom", "pydicom")
    import pydicom

    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _read_ct_with_xml(
    path: Path, want_xml: bool = True, series_uid: str | None = None
) -> tuple[sitk.Image, dict[str, bytes]]:
    """The CT and (``want_xml``) the XML files beside the DICOM (LIDC reader annotations)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"cannot read a CT from {path}: no such file or folder")
    check_input_path(path)
    if path.is_dir():
        return _read_dicom_folder(path, series_uid), (_xml_files(path) if want_xml else {})
    lower = path.name.lower()
    if lower.endswith(_ARCHIVE_SUFFIXES):
        return _read_dicom_archive(path, want_xml, series_uid)
    if lower.endswith((".dcm", ".ima")):
        return _read_dicom_file_series(path), (_xml_files(path.parent) if want_xml else {})
    check_image_file(path)
    try:
        return sitk.ReadImage(str(path)), {}
    except RuntimeError as exc:
        raise InputError(f"cannot read a CT from {path}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages: "Exception thrown in SimpleITK ReadImage: <file>:<line>:\nitk::ERROR: ...".
    return next((line for line in lines if "ERROR" in line), lines[-1] if lines else repr(exc))


def _xml_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*.xml")) if p.is_file()}


def _read_dicom_archive(
    path: Path, want_xml: bool, series_uid: str | None = None
) -> tuple[sitk.Image, dict[str, bytes]]:
    with extracted_archive(path) as folder:
        try:
            image = _read_dicom_folder(folder, series_uid)
        except ValueError as exc:
            raise InputError(f"cannot read a CT from {path}: {exc}") from None
        return image, (_xml_files(folder) if want_xml else {})


def _dicom_series(folder: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(series UID, file names) for every DICOM series in ``folder`` and its sub-folders."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(folder):
        if not filenames:
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid)
            if files:
                found.append((uid, tuple(files)))
    return found


def _read_dicom_folder(folder: Path, series_uid: str | None = None) -> sitk.Image:
    series = _one_series(folder, series_uid)
    return _read_series(series.files, f"{folder} (series {series.uid})")


def _one_series(folder: Path, series_uid: str | None = None) -> SeriesInfo:
    """The series :func:`read_ct` reads from a folder: its only one, or the one named."""
    check_input_path(folder)
    series = _dicom_series(folder)
    if not series:
        raise InputError(f"cannot read a CT from {folder}: no DICOM series found in the folder")
    return choose_series(series, series_uid, str(folder))


def _read_dicom_file_series(path: Path) -> sitk.Image:
    """A single DICOM file: read the whole series it belongs to, from its folder."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        uid = reader.GetMetaData("0020|000e") if reader.HasMetaDataKey("0020|000e") else ""
    except RuntimeError as exc:
        raise InputError(f"cannot read a CT from {path}: {_first_line(exc)}") from None
    return _read_series(_file_series(path, uid), str(path))


def _file_series(path: Path, uid: str) -> tuple[str, ...]:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), uid) if uid else ()
    return tuple(files) or (str(path),)


def _read_series(files, label: str) -> sitk.Image:
    check_series_size(files, label)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read a CT from {label}: {_first_line(exc)}") from None
    for key in _DICOM_TAGS:
        if reader.HasMetaDataKey(0, key):
            image.SetMetaData(key, reader.GetMetaData(0, key).strip())
    return image
