"""The exam's report files beside ``exam.json``: ``exam.html`` with each nodule's key images at
both dates, and, when the current CT was read from DICOM, ``exam_seg.dcm`` and ``exam_sr.dcm``
(docs/DESIGN.md §17)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.clinical.exam import Exam
from ..core.geometry import ImageGeometry
from .exam_html import HTML_FILE, write_exam_html
from .key_image import crop_half_width_mm, key_image_png


@dataclass(frozen=True)
class ExamCT:
    """One date's CT as read: voxels, grid, its DICOM headers (``None`` for another file)."""

    image_zyx: np.ndarray
    geometry: ImageGeometry
    datasets: list | None = None
    date: str | None = None


def key_images(exam: Exam, current: ExamCT, prior: ExamCT | None) -> dict:
    """Per nodule name: (caption, PNG) at the prior date (where it was found there) and now,
    one crop size for both."""
    images = {}
    for n in exam.nodules:
        if n.result is None:
            continue
        pairs = [(current, n.result)]
        if prior is not None and n.prior_result is not None:
            pairs.insert(0, (prior, n.prior_result))
        half = crop_half_width_mm([r.diameter_mm for _, r in pairs])
        images[n.name] = [
            (ct.date or label, key_image_png(ct.image_zyx, ct.geometry, r, half, ct.date or label))
            for (ct, r), label in zip(pairs, ("prior", "current")[-len(pairs) :], strict=True)
        ]
    return images


def write_exam_report(
    document: dict, exam: Exam, current: ExamCT, prior: ExamCT | None, out_dir: str | Path
) -> dict[str, str]:
    """Write the report files; returns their names by kind (``exam.json``'s ``files``)."""
    out = Path(out_dir)
    files = {"html": write_exam_html(document, key_images(exam, current, prior), out / HTML_FILE)}
    if current.datasets:
        from .exam_dicom import write_exam_dicom  # the dicom extra: only for a DICOM CT

        prior_datasets = prior.datasets if prior is not None else None
        files |= write_exam_dicom(
            document, exam, current.datasets, current.geometry, out, prior_datasets
        )
    return {kind: path.name for kind, path in files.items()}
