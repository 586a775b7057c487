"""A CT input is read as it is or refused: one series, the whole file, a bounded size.

Why: a folder holding two patients' series was analysed silently (the series read depended on
file order), a truncated NIfTI was read with its missing part as 0 HU, a 103-byte file declaring
1024³ voxels was allocated, a named pipe hung ``predict`` and a killed extraction stayed in
``/tmp`` forever (issue 28). The checks here run before any voxel is read (docs/DESIGN.md §13):

* :func:`check_input_path`: a regular file or a folder, never a pipe, device or socket (they
  block a reader forever); a folder's own entries too.
* :func:`choose_series`: one DICOM series, or the one ``series_uid`` names; several series are
  refused with their list (UID, description, slices).
* :func:`check_voxel_count`: at most :data:`MAX_CT_VOXELS` declared voxels.
* :func:`check_image_file`: a NIfTI file holds every byte its header declares (SimpleITK reads
  a short NIfTI as zeros; NRRD and MetaImage readers already fail on a short file).
* :func:`extracted_archive`: at most :data:`MAX_EXTRACTED_BYTES` extracted, into a folder
  named with the process ID, removed on exit; folders of killed runs are removed next time.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..core.errors import InputError

__all__ = [
    "IDENTITY_FIELDS",
    "IDENTITY_TAGS",
    "MAX_CT_VOXELS",
    "MAX_EXTRACTED_BYTES",
    "STALE_EXTRACTION_S",
    "SeriesInfo",
    "check_image_file",
    "check_input_path",
    "check_series_size",
    "check_voxel_count",
    "choose_series",
    "extracted_archive",
    "file_identity",
    "input_identity",
    "remove_stale_extractions",
]

# 512 x 512 x 2048 voxels (1 GiB as int16): every chest CT, thin slices included; a larger
# declared size (a damaged or hostile header) is refused before anything is allocated.
MAX_CT_VOXELS = 512 * 512 * 2048
# An archive may extract to at most this much (a DICOM series of MAX_CT_VOXELS is ~1.1 GiB).
MAX_EXTRACTED_BYTES = 2 * 1024**3
EXTRACTION_PREFIX = "NoduleMalignancy-ct-"
# A gzip archive's tar may exceed MAX_EXTRACTED_BYTES by its headers and padding (512 bytes a
# member and more): decompressed up to this much more before it is refused.
_TAR_HEADROOM = 64 * 1024**2
_COPY_BUFFER = 16 * 1024**2  # a member's bytes per write
# An extraction folder whose process is gone is removed at once; one without a readable
# process ID (an older version's) or older than this, whatever its process.
STALE_EXTRACTION_S = 6 * 3600

_SERIES_DESCRIPTION = "0008|103e"
# The input's identity as DICOM names it (ITK "gggg|eeee" keys) -> the result fields.
IDENTITY_TAGS = {
    "0020|000e": "series_uid",
    "0010|0020": "patient_id",
    "0008|0020": "study_date",
}
IDENTITY_FIELDS: tuple[str, ...] = tuple(IDENTITY_TAGS.values())


# Paths -----------------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input_path(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file or a folder whose entries are regular files and folders.

    A pipe, device or socket would block the reader forever (or read endlessly), so it is
    refused by name; symbolic links count as what they point to. ``InputError`` otherwise.
    """
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"cannot read a CT from {path}: no such file or folder") from None
    except OSError as exc:
        raise InputError(f"cannot read a CT from {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        for dirpath, _dirnames, filenames in os.walk(path):
            for name in filenames:
                entry = Path(dirpath) / name
                with contextlib.suppress(OSError):  # a dangling link: the readers skip it
                    entry_mode = entry.stat().st_mode
                    if not stat.S_ISREG(entry_mode):
                        raise InputError(
                            f"cannot read a CT from {path}: {entry} is {_kind(entry_mode)}, not "
                            "a file; remove it from the folder"
                        )
    elif not stat.S_ISREG(mode):
        raise InputError(f"cannot read a CT from {path}: it is {_kind(mode)}, not a file")
    return path


# Series --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series of a folder: its UID, description and files in slice order."""

    uid: str
    description: str
    files: tuple[str, ...]

    @property
    def slices(self) -> int:
        return len(self.files)

    def line(self) -> str:
        return f"  {self.uid}  {self.description or '(no description)'!r}  {self.slices} slices"


def series_description(first_file: str) -> str:
    """The series description of a DICOM file ("" when it has none or cannot be read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first_file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return (
        reader.GetMetaData(_SERIES_DESCRIPTION).strip()
        if reader.HasMetaDataKey(_SERIES_DESCRIPTION)
        else ""
    )


def choose_series(
    series: Sequence[tuple[str, Sequence[str]]], series_uid: str | None, where: str
) -> SeriesInfo:
    """The one series of ``where``, or the one ``series_uid`` names.

    Several series (two patients' slices in one folder, a CT and its scout) are refused with
    their list: which one is meant cannot be guessed, and file order would decide.
    """
    found = [SeriesInfo(uid, series_description(files[0]), tuple(files)) for uid, files in series]
    if not found:
        raise InputError(f"cannot read a CT from {where}: no DICOM series found")
    if series_uid:
        chosen = [s for s in found if s.uid == series_uid.strip()]
        if not chosen:
            listed = "\n".join(s.line() for s in found)
            raise InputError(
                f"cannot read a CT from {where}: no series {series_uid}; it holds:\n{listed}"
            )
        return chosen[0]
    if len(found) > 1:
        listed = "\n".join(s.line() for s in found)
        raise InputError(
            f"{where} holds {len(found)} DICOM series; choose one with --series UID (a "
            f"manifest: a series_uid column):\n{listed}"
        )
    return found[0]


def input_identity(image: sitk.Image | sitk.ImageFileReader) -> dict[str, str]:
    """``series_uid``, ``patient_id`` and ``study_date`` of a CT read from DICOM ("" for a
    file without them): what ``result.json``, the predict CSV and the SR record. A file
    reader's header counts too (an NRRD that :func:`~.samples.read_ct` wrote keeps the tags)."""
    return {
        name: image.GetMetaData(key).strip() if image.HasMetaDataKey(key) else ""
        for key, name in IDENTITY_TAGS.items()
    }


def file_identity(path: str | os.PathLike) -> dict[str, str]:
    """:func:`input_identity` from an image file's header alone (no voxels read); every field
    "" when the header has none or cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return dict.fromkeys(IDENTITY_FIELDS, "")
    return input_identity(reader)


def convolution_kernel(datasets) -> str | None:
    """The reconstruction kernel of a DICOM series (its first slice's ConvolutionKernel, values
    joined), ``None`` for a file without headers or a header without it."""
    kernel = datasets[0].get("ConvolutionKernel") if datasets else None
    if kernel is None or kernel == "":
        return None
    return " ".join(map(str, kernel)) if not isinstance(kernel, str) else str(kernel)


# Sizes ---------------------------------------------------------------------------------------
def check_voxel_count(size: Sequence[int], components: int, where: str) -> None:
    """Refuse a declared size above :data:`MAX_CT_VOXELS` before anything is allocated."""
    count = components
    for n in size:
        count *= int(n)
    if count > MAX_CT_VOXELS:
        shape = " x ".join(str(int(n)) for n in size)
        raise InputError(
            f"cannot read a CT from {where}: it declares {shape} voxels ({count:,}), more "
            f"than the {MAX_CT_VOXELS:,} a CT may have here (docs/DESIGN.md §13)"
        )


def check_series_size(files: Sequence[str], where: str) -> None:
    """A DICOM series' declared size (the first slice's rows, columns and frames, times the
    slices) is allowed, checked before the series is read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the series reader's own error names the problem
    columns, rows, *frames = reader.GetSize()
    depth = len(files) * (frames[0] if frames else 1)
    check_voxel_count((columns, rows, depth), reader.GetNumberOfComponents(), where)


def check_image_file(path: Path) -> None:
    """An image file's declared size is allowed and, for NIfTI, all its bytes are there."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the reader's own error names the problem when it reads the file
    check_voxel_count(reader.GetSize(), reader.GetNumberOfComponents(), str(path))
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti_length(path, lower.endswith(".gz"))


def _nifti_payload_end(header: bytes) -> int | None:
    """Byte offset where a NIfTI-1 or -2 header says its voxels end (None: not NIfTI)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(f"{order}i", header[:4])[0] == 348:
            ndim = struct.unpack(f"{order}h", header[40:42])[0]
            dims = struct.unpack(f"{order}7h", header[42:56])[: max(0, min(ndim, 7))]
            bitpix = struct.unpack(f"{order}h", header[72:74])[0]
            offset = max(int(struct.unpack(f"{order}f", header[108:112])[0]), 352)
            break
        if len(header) >= 540 and struct.unpack(f"{order}i", header[:4])[0] == 540:
            bitpix = struct.unpack(f"{order}h", header[14:16])[0]
            ndim = struct.unpack(f"{order}q", header[16:24])[0]
            dims = struct.unpack(f"{order}7q", header[24:80])[: max(0, min(ndim, 7))]
            offset = max(struct.unpack(f"{order}q", header[168:176])[0], 544)
            break
    else:
        return None
    voxels = 1
    for n in dims:
        voxels *= max(int(n), 1)
    return offset + voxels * bitpix // 8


def _check_nifti_length(path: Path, compressed: bool) -> None:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            end = _nifti_payload_end(f.read(540))
            if end is None:
                return
            length = end if not compressed else _gzip_length(path, end)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read a CT from {path}: damaged compressed data ({exc})") from None
    if not compressed:
        length = path.stat().st_size
    if length < end:
        raise InputError(
            f"cannot read a CT from {path}: the file is truncated: its header declares "
            f"{end:,} bytes, it holds {length:,} (the missing voxels would read as 0)"
        )


def _gzip_length(path: Path, expected: int) -> int:
    """The uncompressed length of a gzip file, read through once unless its trailer (the
    length modulo 2^32 of a single-member file) already says ``expected``."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if struct.unpack("<I", f.read(4))[0] == expected % 2**32:
            return expected
    length = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            length += len(chunk)
    return length


# Archives ------------------------------------------------------------------------------------
def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_extractions(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove this user's extraction folders left by killed runs; the removed paths.

    A folder is stale when the process in its name is gone, or when it has no process ID
    (an older version's) or is older than :data:`STALE_EXTRACTION_S`.
    """
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    now = time.time()
    for path in folder.glob(f"{EXTRACTION_PREFIX}*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        pid = path.name[len(EXTRACTION_PREFIX) :].split("-", 1)[0]
        gone = pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid))
        if gone or now - info.st_mtime > STALE_EXTRACTION_S:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _check_member(path: Path, member: tarfile.TarInfo, root: Path, total: int) -> int:
    """The bytes extracted so far with ``member``; refuses a link, pipe or device, a path
    outside ``root`` and a running total above :data:`MAX_EXTRACTED_BYTES`."""
    if not (member.isfile() or member.isdir()):
        raise InputError(
            f"cannot read a CT from {path}: {member.name} in the archive is not a file or "
            "folder (a link, pipe or device)"
        )
    target = (root / member.name).resolve()
    if root not in target.parents and target != root:
        raise InputError(f"cannot read a CT from {path}: unsafe path in archive: {member.name}")
    total += member.size if member.isfile() else 0
    if total > MAX_EXTRACTED_BYTES:
        raise InputError(
            f"cannot read a CT from {path}: the archive extracts to at least {total:,} bytes, "
            f"more than the {MAX_EXTRACTED_BYTES:,} allowed (docs/DESIGN.md §13)"
        )
    return total


def _gunzipped(path: Path) -> bytes:
    """The tar inside a gzip file, decompressed in one call, refused past
    :data:`MAX_EXTRACTED_BYTES` and the tar headers' share (:data:`_TAR_HEADROOM`).

    Why not tarfile's stream: it decompresses 10 kB at a time, and each call hands the GIL
    over; a cold ``analyze`` imports torch in a thread meanwhile (cli.ANALYZE_IMPORTS), and
    thousands of hand-overs made the read 2-3x slower. Here it is one (0.3 s of zlib for the
    70 MB sample); the tar is held in memory instead, as much as is then written out.
    """
    limit = MAX_EXTRACTED_BYTES + _TAR_HEADROOM
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    tar = inflate.decompress(path.read_bytes(), limit + 1)
    if len(tar) > limit:
        raise InputError(
            f"cannot read a CT from {path}: the archive extracts to more than the "
            f"{MAX_EXTRACTED_BYTES:,} bytes allowed (docs/DESIGN.md §13)"
        )
    if not inflate.eof:
        raise EOFError("the compressed data ends early")
    return tar


def _open_tar(path: Path) -> tarfile.TarFile:
    """The archive for reading its members in order, copied in one call each: a gzip file's tar
    from memory (:func:`_gunzipped`), any other (plain, bz2, xz) through tarfile."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        data = io.BytesIO(_gunzipped(path))
        return tarfile.open(fileobj=data, mode="r:", copybufsize=_COPY_BUFFER)
    return tarfile.open(path, mode="r:*", copybufsize=_COPY_BUFFER)


@contextlib.contextmanager
def extracted_archive(path: Path) -> Iterator[Path]:
    """A temporary folder holding the archive's files, removed on exit.

    One pass over the archive's members (a gzip file decompressed once, in memory:
    :func:`_open_tar`), each member checked before it is written: no links, pipes or devices,
    no path outside the folder (and tarfile's ``data`` filter where Python has it), the running
    total within :data:`MAX_EXTRACTED_BYTES` (what was written is removed when it is refused).
    The folder's name carries this process's ID, so a run killed meanwhile leaves a folder the
    next run removes (:func:`remove_stale_extractions`).
    """
    remove_stale_extractions()
    tmp = Path(tempfile.mkdtemp(prefix=f"{EXTRACTION_PREFIX}{os.getpid()}-"))
    try:
        try:
            _extract(path, tmp)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise InputError(
                f"cannot read a CT from {path}: not a readable tar archive ({exc})"
            ) from None
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(path: Path, folder: Path) -> None:
    """Every member into ``folder``, each checked first (:func:`_check_member`); the archive's
    bytes in memory are freed on return, before the caller reads the files."""
    options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with _open_tar(path) as archive:
        root, total = folder.resolve(), 0
        for member in archive:
            total = _check_member(path, member, root, total)
            archive.extract(member, folder, **options)
