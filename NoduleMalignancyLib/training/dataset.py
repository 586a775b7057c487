"""Training data: per-nodule targets from the reader ratings and a one-time sampled canvas cache.

Every nodule is sampled ONCE around its metadata world centre (LPS) with the core's
:func:`~NoduleMalignancyLib.core.nodule.voi.sample_voi` on a canvas larger than the VOI (same spacing), so
that augmentation (shift, rotation about z, scale) can be done later in torch by resampling the
canvas onto the VOI grid, never touching the NIfTI files again. The consensus mask is resampled
onto the same canvas. Arrays live in one ``.npz`` file keyed by a hash of the data files and the
configuration, so the cache rebuilds itself when either changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import (
    ATTRIBUTES,
    DEFAULT_CANVAS_ZYX,
    ORDINAL_ATTRIBUTES,
    PRESENCE_ATTRIBUTES,
    VoiConfig,
    canvas_config,
)
from ..core.errors import MissingFileError
from ..core.nodule.attributes import READER_COLUMN, ordinal_target, presence_target, reader_ratings
from ..core.settings import cache_dir, require_data_dir
from ..files.csv_cells import read_csv

log = logging.getLogger(__name__)

VOI_FOLDER = "lidc_vois"
# Bump when the cache layout or the sampling code changes meaning.
CACHE_VERSION = 2
LABEL_THRESHOLD = 3.0


def voi_dir(data: str | os.PathLike | None = None) -> Path:
    """Accept either the data root (containing ``lidc_vois/``) or a VOI folder itself."""
    root = require_data_dir(data, f"{VOI_FOLDER}/")
    if (root / "metadata.csv").is_file():
        return root
    if (root / VOI_FOLDER / "metadata.csv").is_file():
        return root / VOI_FOLDER
    raise MissingFileError(f"No metadata.csv in {root} or {root / VOI_FOLDER}.")


def training_cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Canvas cache: ``explicit``, else ``<cache>/training`` (see :mod:`..core.settings`)."""
    return Path(explicit) if explicit else cache_dir("training")


@dataclass
class NoduleRecord:
    """One nodule: where its files are, its world centre and its training targets."""

    patient_id: str
    nodule_id: str
    image_path: Path
    mask_path: Path | None
    center_lps: np.ndarray  # (3,)
    targets: np.ndarray  # (9,) in [0, 1], NaN where unknown, order ATTRIBUTES
    malignancy_mean: float = math.nan
    diameter_mean_mm: float = math.nan
    n_readers: int = 0

    @property
    def name(self) -> str:
        return f"{self.patient_id}_R_{self.nodule_id}"

    @property
    def label(self) -> float:
        """Binary malignancy for metrics: mean > 3 -> 1, < 3 -> 0, exactly 3 (or unknown) -> NaN."""
        return malignancy_label(self.malignancy_mean)


def malignancy_label(mean_rating: float) -> float:
    """Label protocol of docs/DESIGN.md §4: > 3 malignant, < 3 benign, == 3 excluded (NaN)."""
    if mean_rating is None or not np.isfinite(mean_rating) or mean_rating == LABEL_THRESHOLD:
        return math.nan
    return 1.0 if mean_rating > LABEL_THRESHOLD else 0.0


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def targets_from_reader_row(row: dict) -> np.ndarray:
    """The 9 soft targets (ATTRIBUTES order) from one row of ``reader_labels.csv``.

    Ordinal attributes: (mean rating - 1) / 4; calcification / internal structure: fraction of
    readers whose rating is not "absent" / "soft tissue". NaN where the row has no ratings.
    """
    out = np.full(len(ATTRIBUTES), np.nan, dtype=np.float32)
    for a, name in enumerate(ATTRIBUTES):
        col = READER_COLUMN[name]
        if name in ORDINAL_ATTRIBUTES:
            mean = _float(row.get(f"{col}_mean"))
            if not np.isfinite(mean):
                ratings = reader_ratings(row, name)
                mean = float(np.mean(ratings)) if len(ratings) else math.nan
            if np.isfinite(mean):
                out[a] = ordinal_target(mean)
        elif name in PRESENCE_ATTRIBUTES:
            ratings = reader_ratings(row, name)
            if len(ratings):
                out[a] = presence_target(ratings, name)
    return out


def _read_csv(path: Path) -> list[dict]:
    return read_csv(path)


def load_records(data: str | os.PathLike | None = None) -> list[NoduleRecord]:
    """All nodules of a VOI folder (``metadata.csv``, ``image/``, ``nodule_mask/``).

    Targets come from ``reader_labels.csv``; a folder without it (another cohort in the same VOI
    format) may give a binary ``label`` column in ``metadata.csv``, used as the malignancy target
    with the other attributes unknown. Listed nodules without an image file are skipped with a
    logged note.
    """
    folder = voi_dir(data)
    meta = _read_csv(folder / "metadata.csv")
    readers_path = folder / "reader_labels.csv"
    readers = {}
    if readers_path.is_file():
        readers = {(r["patient_id"], str(r["nodule_id"])): r for r in _read_csv(readers_path)}
    records, missing = [], []
    for row in meta:
        pid, nid = row["patient_id"], str(row["nodule_id"])
        image = folder / "image" / f"{pid}_R_{nid}.nii.gz"
        if not image.is_file():
            missing.append(image.name)
            continue
        mask = folder / "nodule_mask" / image.name
        center = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
        rr = readers.get((pid, nid))
        if rr is not None:
            targets = targets_from_reader_row(rr)
            mal = _float(rr.get("malignancy_mean"))
            diam = _float(rr.get("diameter_mean_mm"))
            n_readers = int(_float(rr.get("n_readers")) if rr.get("n_readers") else 0)
        else:
            targets = np.full(len(ATTRIBUTES), np.nan, dtype=np.float32)
            lab = _float(row.get("label"))
            mal = math.nan
            if np.isfinite(lab):
                targets[ATTRIBUTES.index("malignancy")] = lab
                mal = 5.0 if lab > 0.5 else 1.0  # only its side of 3 matters for the label
            diam = _float(row.get("diameter_mm"))
            n_readers = 0
        records.append(
            NoduleRecord(
                pid,
                nid,
                image,
                mask if mask.is_file() else None,
                center,
                targets,
                mal,
                diam,
                n_readers,
            )
        )
    if missing:
        log.warning(
            "%d listed VOI(s) in %s have no image file and are skipped: %s",
            len(missing),
            folder,
            ", ".join(missing),
        )
    return records


# ----------------------------------------------------------------------------------------------
# The canvas cache


def sample_record(record: NoduleRecord, canvas: VoiConfig) -> dict:
    """HU, validity and resampled consensus mask of one nodule on the canvas grid."""
    import SimpleITK as sitk

    from ..core.geometry import ImageGeometry
    from ..core.nodule.voi import resample_to_grid, sample_voi

    image = sitk.ReadImage(str(record.image_path))
    array = sitk.GetArrayFromImage(image)
    geom = ImageGeometry.from_sitk(image)
    m_img = sitk.ReadImage(str(record.mask_path)) if record.mask_path is not None else None
    m_arr = (sitk.GetArrayFromImage(m_img) > 0).astype(np.float32) if m_img is not None else None
    center = record.center_lps
    if not geom.contains_lps(center):
        # One LIDC VOI (LIDC-IDRI-0332_R_1) comes from another series than its metadata centre;
        # its mask and ratings agree with each other, so centre on the mask instead.
        if m_arr is not None and m_arr.any():
            ijk = np.argwhere(m_arr > 0)[:, ::-1].mean(0)
            center = ImageGeometry.from_sitk(m_img).index_to_lps(ijk)
            log.warning(
                "%s: metadata centre outside its VOI file; using the mask centroid %s",
                record.name,
                np.round(center, 1).tolist(),
            )
        else:
            log.warning("%s: centre outside its VOI file and no mask; sampled anyway", record.name)
    s = sample_voi(array, geom, center, canvas, require_inside=False)
    if m_arr is not None:
        mask = resample_to_grid(m_arr, ImageGeometry.from_sitk(m_img), s.geometry, fill=0.0)
        has_mask = True
    else:
        mask = np.zeros(canvas.shape_zyx, dtype=np.float32)
        has_mask = False
    return {
        "hu": s.hu.astype(np.float16),
        "valid": (s.valid > 0.5).astype(np.uint8),
        "mask": np.clip(mask, 0.0, 1.0).astype(np.float16),
        "has_mask": has_mask,
    }


@dataclass
class TrainingData:
    """Canvas arrays of N nodules plus their table (in memory; float16 HU to halve the RAM)."""

    records: list[NoduleRecord]
    hu: np.ndarray  # (N, D, H, W) float16
    valid: np.ndarray  # (N, D, H, W) uint8 in {0, 1}
    mask: np.ndarray  # (N, D, H, W) float16 in [0, 1]
    has_mask: np.ndarray  # (N,) bool
    voi: VoiConfig
    canvas_zyx: tuple[int, int, int]
    data_hash: str
    build_seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def patient_ids(self) -> list[str]:
        return [r.patient_id for r in self.records]

    @property
    def targets(self) -> np.ndarray:
        """(N, 9) soft targets, NaN where unknown."""
        return np.stack([r.targets for r in self.records]).astype(np.float32)

    @property
    def labels(self) -> np.ndarray:
        """(N,) binary malignancy labels, NaN for mean exactly 3 / unknown."""
        return np.array([r.label for r in self.records], dtype=np.float64)

    def subset(self, indices) -> TrainingData:
        idx = np.asarray(indices, dtype=int)
        return TrainingData(
            [self.records[i] for i in idx],
            self.hu[idx],
            self.valid[idx],
            self.mask[idx],
            self.has_mask[idx],
            self.voi,
            self.canvas_zyx,
            self.data_hash,
            self.build_seconds,
            dict(self.meta),
        )


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


def data_hash(records: list[NoduleRecord], voi: VoiConfig, canvas_zyx) -> str:
    """Hash of the data file list (names and sizes), the tables and the sampling configuration."""
    h = hashlib.sha256()
    folders = sorted({str(r.image_path.parent.parent) for r in records})
    for folder in folders:
        for name in ("metadata.csv", "reader_labels.csv"):
            h.update(f"{name}:{_file_digest(Path(folder) / name)}\n".encode())
    for r in records:
        msize = r.mask_path.stat().st_size if r.mask_path is not None else -1
        h.update(f"{r.name}:{r.image_path.stat().st_size}:{msize}\n".encode())
    cfg = {"voi": voi.to_dict(), "canvas": list(canvas_zyx), "version": CACHE_VERSION}
    h.update(json.dumps(cfg, sort_keys=True).encode())
    return h.hexdigest()


def _sample_many(args) -> list[dict]:
    records, canvas = args
    return [sample_record(r, canvas) for r in records]


def build_cache(
    records: list[NoduleRecord],
    voi: VoiConfig,
    canvas_zyx=DEFAULT_CANVAS_ZYX,
    cache: str | os.PathLike | None = None,
    workers: int = 1,
    rebuild: bool = False,
) -> TrainingData:
    """Load the canvas cache for these nodules, building (and timing) it when absent or stale."""
    canvas = canvas_config(voi, canvas_zyx)
    key = data_hash(records, voi, canvas.shape_zyx)
    path = training_cache_dir(cache) / f"canvas_{key[:20]}.npz"
    if path.is_file() and not rebuild:
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(n) for n in z["names"]]
                if names == [r.name for r in records]:
                    meta = json.loads(str(z["meta"]))
                    return TrainingData(
                        records,
                        z["hu"],
                        z["valid"],
                        z["mask"],
                        z["has_mask"].astype(bool),
                        voi,
                        canvas.shape_zyx,
                        key,
                        float(meta.get("build_seconds", 0.0)),
                        {"cache_file": str(path), "cache_hit": True, **meta},
                    )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("Cache %s unreadable (%s); rebuilding", path, exc)
    t0 = time.perf_counter()
    workers = max(1, min(int(workers), len(records)))
    if workers > 1:
        chunks = [records[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_sample_many, [(c, canvas) for c in chunks]))
        samples: list[dict] = [None] * len(records)  # type: ignore[list-item]
        for w, part in enumerate(parts):
            for j, s in enumerate(part):
                samples[w + j * workers] = s
    else:
        samples = [sample_record(r, canvas) for r in records]
    hu = np.stack([s["hu"] for s in samples])
    valid = np.stack([s["valid"] for s in samples])
    mask = np.stack([s["mask"] for s in samples])
    has_mask = np.array([s["has_mask"] for s in samples], dtype=bool)
    seconds = time.perf_counter() - t0
    meta = {"build_seconds": seconds, "n": len(records), "canvas_zyx": list(canvas.shape_zyx)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        hu=hu,
        valid=valid,
        mask=mask,
        has_mask=has_mask,
        names=np.array([r.name for r in records]),
        meta=np.array(json.dumps(meta)),
    )
    os.replace(tmp, path)
    log.info("Built canvas cache of %d nodules in %.1f s -> %s", len(records), seconds, path)
    return TrainingData(
        records,
        hu,
        valid,
        mask,
        has_mask,
        voi,
        canvas.shape_zyx,
        key,
        seconds,
        {"cache_file": str(path), "cache_hit": False, **meta},
    )


def load_training_data(
    data: str | os.PathLike | None = None,
    voi: VoiConfig | None = None,
    canvas_zyx=DEFAULT_CANVAS_ZYX,
    cache: str | os.PathLike | None = None,
    patients: list[str] | None = None,
    limit: int | None = None,
    workers: int = 1,
) -> TrainingData:
    """Records plus canvas cache of a VOI folder, optionally restricted to some patients."""
    records = load_records(data)
    if patients is not None:
        keep = set(patients)
        records = [r for r in records if r.patient_id in keep]
    if limit is not None:
        records = records[: int(limit)]
    if not records:
        raise ValueError(f"No nodules with images found in {voi_dir(data)}.")
    return build_cache(records, voi or VoiConfig(), canvas_zyx, cache, workers)
