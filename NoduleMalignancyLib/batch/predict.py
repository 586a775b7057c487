"""The ``predict`` batch contract, one CT at a time: a pure function a Dask worker can run.

Why one function per CT: the CT is read once and all its nodules are scored together, in the
client process or on a worker (docs/DESIGN.md §13); the CLI only parses arguments and writes
the CSV. The ensemble is loaded once per process (:func:`cached_ensemble`), never shipped.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from ..core.result_schema import CSV, csv_row, fields_for
from ..files.row_errors import failure_message, failure_traceback, row_failure
from .row_timeout import DEFAULT_ROW_TIMEOUT_S, RowTimeoutError, row_deadline

# The manifest layout `predict`, `export --points` and `report` read (README: CLI).
MANIFEST_COLUMNS = ("id", "image", "x", "y", "z")

# The batch contract's output columns (README), named and ordered by the result schema
# (core/result_schema.py): renaming one is a contract change (README: Changelog).
PREDICT_COLUMNS = tuple(f.name for f in fields_for(CSV))


def load_image(path: str | Path, series_uid: str | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """(HU array (z, y, x), geometry) of any CT the project reads."""
    from ..files.samples import read_ct

    return image_arrays(read_ct(path, series_uid))


def read_input(
    path: str | Path, series_uid: str | None = None, dicom: bool = False
) -> tuple[np.ndarray, ImageGeometry, list | None, dict[str, str]]:
    """(voxels, geometry, the DICOM headers when ``dicom``, identity) of a CT, one series.

    The identity (``series_uid``, ``patient_id``, ``study_date``; empty for a file without
    them) is what ``result.json`` and the predict CSV record of the input read.
    """
    from ..files.ct_input import input_identity
    from ..files.samples import read_ct, read_ct_with_dicom

    image, datasets = (
        read_ct_with_dicom(path, series_uid) if dicom else (read_ct(path, series_uid), None)
    )
    return (*image_arrays(image), datasets, input_identity(image))


def series_of(row: dict) -> str | None:
    """The manifest row's optional ``series_uid`` (a folder or archive with several series)."""
    return (row.get("series_uid") or "").strip() or None


def image_arrays(image) -> tuple[np.ndarray, ImageGeometry]:
    """(voxel array (z, y, x), geometry) of a SimpleITK image: the one conversion every batch
    reader (predict, export, analyze) shares."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)


def cached_ensemble(models: str | Path | None, device: str = "auto"):
    """The ensemble of ``models`` on ``device``, loaded once per process.

    Why: a Dask worker runs many CT tasks; each would otherwise re-read and re-verify the K
    weights files. The key includes the manifest's size and mtime, so a folder rewritten in
    place (a new export) is loaded afresh.
    """
    from ..core.model.ensemble import MANIFEST_NAME
    from ..core.settings import models_dir

    directory = Path(models_dir(models)).resolve()
    manifest = directory / MANIFEST_NAME
    stamp = (manifest.stat().st_size, manifest.stat().st_mtime_ns) if manifest.is_file() else None
    return _load_ensemble(str(directory), device, stamp)


@lru_cache(maxsize=2)
def _load_ensemble(directory: str, device: str, stamp):
    from ..core.model.ensemble import Ensemble

    return Ensemble.load(directory, device=device)


def ensemble_loads() -> int:
    """How many ensembles this process has loaded (a worker should load one per run)."""
    return _load_ensemble.cache_info().misses


def predict_ct(
    image_path: str,
    rows: list[dict],
    models: str | Path | None = None,
    device: str = "auto",
    masks_dir: str | Path | None = None,
    torch_threads: int | None = None,
    dicom_out: str | Path | None = None,
    row_timeout: float | None = None,
) -> list[dict]:
    """One result row (PREDICT_COLUMNS keys) per manifest row of one image, in their order.

    A row that cannot be scored gets its reason in ``error`` (an unreadable image: every row);
    ``masks_dir`` gets :func:`mask_file_name` masks in the image's geometry, written here (on a Dask
    worker: a filesystem the workers share). ``torch_threads`` caps the intra-op threads (one
    per worker process on a cluster, so N workers use N cores).
    """
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    ensemble = cached_ensemble(models, device)
    datasets, identity = None, {}
    try:
        with row_deadline(row_timeout, f"reading {image_path}"):
            array, geometry, datasets, identity = read_input(
                image_path, series_of(rows[0]), bool(dicom_out)
            )
        load_error = None
    except Exception as exc:  # every row of the image gets the reason (a bug: the traceback)
        array, geometry, load_error = None, None, row_failure(exc, "cannot read image: ")
    found: list = []  # (id, result, mask) for the DICOM SEG / SR of this CT
    recs = []
    for row in rows:  # each row within the row timeout (batch/row_timeout.py)
        try:
            with row_deadline(row_timeout, f"row {row['id']!r}"):
                rec = _predict_row(
                    row, array, geometry, ensemble, masks_dir, load_error, datasets, found,
                    identity.get("patient_id"),
                )  # fmt: skip
        except RowTimeoutError as exc:
            rec = {"id": row["id"], **row_failure(exc)}
        recs.append(identity | rec)
    if dicom_out and not load_error:
        _write_dicom(dicom_out, image_path, datasets, geometry, found)
    return recs


def _write_dicom(folder, image_path, datasets, geometry, found) -> None:
    """One SEG + SR per DICOM CT of a manifest, in ``<folder>/<series instance UID>/``."""
    import sys

    if datasets is None:
        print(f"note: {image_path} is not DICOM: no DICOM SEG / SR for it", file=sys.stderr)
        return
    if not found:
        return
    from ..files.dicom_outputs import write_dicom_outputs

    ids, results, masks = zip(*found, strict=True)
    out = Path(folder) / str(datasets[0].SeriesInstanceUID)
    try:  # the rows are scored either way: one CT's DICOM failing does not stop the run
        write_dicom_outputs(datasets, geometry, list(masks), list(results), out, labels=list(ids))
    except Exception as exc:
        print(f"error: DICOM SEG / SR for {image_path}: {failure_message(exc)}", file=sys.stderr)
        print(failure_traceback(exc) or "", end="", file=sys.stderr)  # a bug's, not hidden


def _predict_row(
    row: dict,
    array,
    geometry,
    ensemble,
    masks_dir,
    load_error,
    datasets=None,
    found=None,
    patient_id: str | None = None,
) -> dict:
    from ..core.nodule.analysis import analyze_point
    from ..core.scope.assessment import REFUSED
    from ..core.scope.validation import RefusedError
    from ..files.writers import write_volume

    rec = {"id": row["id"], "error": ""}
    if load_error:
        return rec | load_error
    try:
        mask_path = Path(masks_dir) / mask_file_name(row["id"]) if masks_dir else None
        point = manifest_point(row)
        map_to_ct = bool(masks_dir or datasets)
        r = analyze_point(
            array, geometry, point, ensemble, map_to_ct=map_to_ct, patient_id=patient_id
        )
        rec.update(result_columns(r))
        if mask_path:
            write_volume(full_mask(r, geometry), geometry, mask_path)
        if datasets and found is not None:
            found.append((row["id"], r, full_mask(r, geometry)))
    except RefusedError as exc:
        rec["error"] = f"{exc.code}: {exc}".replace("\n", " ")
        rec["assessment"] = REFUSED  # core/scope/assessment.py: no numbers
    except Exception as exc:  # one bad row never stops the run; a bug's traceback: the log
        rec.update(row_failure(exc))
    return rec


def manifest_point(row: dict, columns=MANIFEST_COLUMNS[2:], label: str = "") -> np.ndarray:
    """The world LPS point of a table row, or an error that names the row's values."""
    try:
        return np.array([float(row[c]) for c in columns])
    except (TypeError, ValueError):
        got = ", ".join(repr(row[c]) for c in columns)
        where = f"{label}: " if label else ""
        raise InputError(
            f"{where}{', '.join(columns)} must be numbers (world LPS mm): got {got}"
        ) from None


def mask_file_name(row_id: str) -> str:
    """``<id>.nii.gz`` with the id made file-name safe, as patch files are: a manifest id such
    as ``../x`` or ``a/b c`` must stay a plain file inside ``--masks-dir`` (``report`` finds the
    mask by this name). An id with no safe character at all raises ``ValueError``."""
    from ..files.patches import safe_id

    try:
        return f"{safe_id(row_id)}.nii.gz"
    except ValueError:
        raise InputError(f"id {row_id!r} has no file-name-safe character for its mask") from None


def check_mask_names(ids: list[str]) -> None:
    """Refuse, before any work, a manifest whose ids would write the same mask file twice
    (``a/b`` and ``a_b`` both become ``a_b.nii.gz``; a repeated id): the second mask would
    silently replace the first. ``ValueError`` names the ids."""
    by_name: dict[str, list[str]] = {}
    for row_id in ids:
        try:
            by_name.setdefault(mask_file_name(row_id), []).append(row_id)
        except ValueError:
            continue  # no mask at all: that row fails on its own
    clashes = {name: found for name, found in by_name.items() if len(found) > 1}
    if clashes:
        listed = "; ".join(f"{name}: {found}" for name, found in list(clashes.items())[:5])
        raise InputError(
            f"{len(clashes)} mask file name(s) would be written by more than one manifest row "
            f"({listed}). Give every row a distinct id (letters, digits, '.', '_', '-')."
        )


def result_columns(r) -> dict[str, str]:
    """A :class:`~NoduleMalignancyLib.core.nodule.analysis.NoduleResult` as formatted CSV cells."""
    return csv_row(r.values())


def full_mask(result, geometry: ImageGeometry) -> np.ndarray:
    """The segmentation as a binary mask in the whole input image's geometry."""
    from ..core.nodule.voi import embed_sub_grid, sub_grid_offset

    offset = sub_grid_offset(geometry, result.ct_grid)
    mask = result.segmentation_mask_ct.astype(np.uint8)
    return embed_sub_grid(mask, offset, geometry.shape_zyx)


def predict_rows(
    rows: list[dict],
    models: str | Path | None = None,
    device: str = "auto",
    masks_dir: str | Path | None = None,
    client=None,
    dicom_out: str | Path | None = None,
    row_timeout: float | None = DEFAULT_ROW_TIMEOUT_S,
) -> list[dict]:
    """One result row per manifest row, in input order: one :func:`predict_ct` task per image,
    here (``client`` None: torch threads as they are) or on a Dask cluster (one torch thread
    per worker; paths made absolute for the workers)."""
    from ..core.settings import models_dir
    from .cluster import map_in_order

    if masks_dir:
        check_mask_names([row["id"] for row in rows])
    threads = None
    if client is not None:
        models = str(Path(models_dir(models)).resolve())
        masks_dir = str(Path(masks_dir).resolve()) if masks_dir else None
        dicom_out = str(Path(dicom_out).resolve()) if dicom_out else None
        threads = 1
    groups = list(group_by_image(rows).items())
    calls = [
        (
            image,
            [rows[i] for i in indices],
            models,
            device,
            masks_dir,
            threads,
            dicom_out,
            row_timeout,
        )
        for (image, _series), indices in groups
    ]
    weights = [len(indices) for _, indices in groups]
    results: dict[int, dict] = {}
    for k, out, exc in map_in_order(predict_ct, calls, client, "predict", weights):
        recs = out if exc is None else failed_rows(calls[k][1], exc)
        results.update(zip(groups[k][1], recs, strict=True))
    return [results[i] for i in range(len(rows))]


def group_by_image(rows: list[dict]) -> dict[tuple[str, str], list[int]]:
    """Row indices per (image, series), in order of first appearance (each read once)."""
    by_image: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        by_image.setdefault((row["image"], series_of(row) or ""), []).append(i)
    return by_image


def failed_rows(rows: list[dict], exc: BaseException) -> list[dict]:
    """The rows of a CT whose task failed as a whole (a worker lost, an unexpected error)."""
    return [{"id": row["id"], **row_failure(exc, "task failed: ")} for row in rows]
