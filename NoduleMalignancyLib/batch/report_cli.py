"""``nodule-malignancy report``: the batch review page of a ``predict`` run.

``predict --manifest M.csv --out P.csv --masks-dir masks && report --predictions P.csv
--manifest M.csv --masks-dir masks --out report.html``. The predictions are matched to the
manifest row by row (``predict`` writes one row per manifest row, in order); each CT is read once
for the thumbnails of all its rows (docs/DESIGN.md §13). The page itself is
``files/batch_report.py``.
"""

from __future__ import annotations

import csv
import time
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.atomic import atomic_path
from ..core.errors import InputError, is_expected
from ..core.settings import models_dir
from ..files.batch_report import (
    ReportHeader,
    ReportRow,
    batch_counts,
    png_bytes,
    point_inside,
    render_report,
    thumbnail,
)
from ..files.samples import read_ct
from .predict import MANIFEST_COLUMNS, mask_file_name

__all__ = ["build_rows", "register", "write_batch_report"]


def _read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _matched(manifest: list[dict], predictions: list[dict]) -> None:
    """Refuse predictions that are not this manifest's, rather than show wrong thumbnails."""
    missing = set(MANIFEST_COLUMNS) - set(manifest[0] if manifest else MANIFEST_COLUMNS)
    if missing:
        raise InputError(f"the manifest lacks columns {sorted(missing)}")
    ids = [r.get("id") for r in predictions]
    if len(predictions) != len(manifest) or ids != [r["id"] for r in manifest]:
        raise InputError(
            f"the predictions ({len(predictions)} rows) are not this manifest's "
            f"({len(manifest)} rows): ids differ; rerun predict on the manifest"
        )


def _point(row: dict[str, str]) -> np.ndarray | None:
    try:
        point = np.array([float(row[k]) for k in ("x", "y", "z")])
    except (KeyError, TypeError, ValueError):
        return None
    return point if np.all(np.isfinite(point)) else None


def _mask(masks_dir: str | Path | None, row_id: str) -> sitk.Image | None:
    """The mask ``predict --masks-dir`` wrote for this id (same file name), if any."""
    if not masks_dir:
        return None
    try:
        path = Path(masks_dir) / mask_file_name(row_id)
        return sitk.ReadImage(str(path)) if path.is_file() else None
    except (ValueError, RuntimeError):  # no file name for this id, an unreadable file
        return None


def _add_thumbnail(row: ReportRow, image: sitk.Image, point, masks_dir) -> None:
    if point is None:
        row.thumbnail_note = "no point"
    elif not point_inside(image, point):
        row.thumbnail_note = "point outside the image"
    else:
        scored = not row.prediction.get("error")
        mask = _mask(masks_dir, row.id) if scored else None
        try:
            row.thumbnail_png = png_bytes(thumbnail(image, point, mask))
        except RuntimeError as exc:  # e.g. a 2D image: SimpleITK cannot resample it in 3D
            row.thumbnail_note = f"no thumbnail: {str(exc).splitlines()[0][:80]}"


def build_rows(
    manifest: Sequence[dict[str, str]],
    predictions: Sequence[dict[str, str]],
    masks_dir: str | Path | None = None,
) -> list[ReportRow]:
    """The report rows in the manifest's order, each CT read once for all its thumbnails."""
    rows = [
        ReportRow(id=m["id"], image=m["image"], prediction=dict(p))
        for m, p in zip(manifest, predictions, strict=True)
    ]
    by_image: dict[str, list[int]] = {}
    for i, m in enumerate(manifest):
        by_image.setdefault(m["image"], []).append(i)
    for image_path, indices in by_image.items():
        try:
            image = read_ct(image_path)
        except Exception as exc:  # the row's own error says why; a bug is printed, not hidden
            if not is_expected(exc):
                traceback.print_exc()
            for i in indices:
                rows[i].thumbnail_note = "image not readable"
            continue
        for i in indices:
            _add_thumbnail(rows[i], image, _point(manifest[i]), masks_dir)
    return rows


def _models_version(explicit: str | None) -> str:
    from ..core.model.ensemble import Manifest, WeightsError

    try:
        return Manifest.read(models_dir(explicit)).model_version
    except WeightsError:
        return "unknown"


def write_batch_report(
    predictions: str | Path,
    manifest: str | Path,
    out: str | Path,
    masks_dir: str | Path | None = None,
    models: str | None = None,
) -> dict[str, int]:
    """Write the page atomically; returns the batch counts."""
    manifest_rows, prediction_rows = _read_csv(manifest), _read_csv(predictions)
    _matched(manifest_rows, prediction_rows)
    rows = build_rows(manifest_rows, prediction_rows, masks_dir)
    sources = {"predictions": str(predictions), "manifest": str(manifest)}
    if masks_dir:
        sources["masks"] = str(masks_dir)
    header = ReportHeader(
        generated=datetime.now().astimezone().isoformat(timespec="seconds"),
        models_version=_models_version(models),
        sources=sources,
    )
    with atomic_path(out) as tmp:
        tmp.write_text(render_report(rows, header), encoding="utf-8")
    return batch_counts(rows)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="self-contained HTML review page of a predict run (thumbnails, warnings)"
    )
    parser.add_argument("--predictions", required=True, help="the CSV predict wrote")
    parser.add_argument("--manifest", required=True, help="the manifest predict read")
    parser.add_argument("--masks-dir", default=None, help="the masks predict --masks-dir wrote")
    parser.add_argument("--out", required=True, help="HTML file")
    parser.add_argument("--models", default=None, help="ensemble folder, for its version")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    start = time.perf_counter()
    counts = write_batch_report(
        args.predictions, args.manifest, args.out, args.masks_dir, args.models
    )
    size = Path(args.out).stat().st_size
    print(
        f"report: {counts['rows']} rows ({counts['scored']} scored, {counts['warned']} warned, "
        f"{counts['refused']} refused, {counts['failed']} failed) -> {args.out} "
        f"({size / 1024:.0f} KiB, {time.perf_counter() - start:.1f} s)"
    )
    return 0
