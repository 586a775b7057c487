"""Training patches from a Slicer scene: a CT volume and a point list a reader labelled.

A reader marks nodules in Slicer and labels each control point in its description
(``malignant`` / ``benign``, ``1`` / ``0`` or ``label=1`` / ``label=0``; empty = unknown). The
patches go through the same writer as the command-line export (``files/patches.py``), so a
scene, a LUNA25 table and LIDC-IDRI give the same folder layout (docs/DESIGN.md §13).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from ..files.patches import CtToExport, ExportSummary, LoadedCt, NoduleToExport, export_patches
from .requests import AnalysisRequest
from .slicer_api import slicer

MALIGNANT_WORDS = {"1", "malignant", "label=1"}
BENIGN_WORDS = {"0", "benign", "label=0"}


def point_label(description: str, point_name: str) -> float:
    """1 / 0 / NaN from a control point's description; anything else is the reader's typo."""
    text = (description or "").strip().lower().replace(" ", "")
    if not text:
        return math.nan
    if text in MALIGNANT_WORDS:
        return 1.0
    if text in BENIGN_WORDS:
        return 0.0
    raise ValueError(
        f"Point {point_name!r}: its description {description!r} is not a label; write "
        "'malignant' or 'benign' (or 1 / 0), or leave it empty for an unlabelled nodule."
    )


def _segment_mask(segmentation_node, name: str, volume_node) -> np.ndarray | None:
    """The segment named like the point, as a (z, y, x) mask on the volume's grid."""
    if segmentation_node is None:
        return None
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    if not segment_id:
        return None
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)


def _scene_sha256(request: AnalysisRequest, nodules: list[NoduleToExport]) -> str:
    """Voxels, world geometry and the points with their labels: a scene volume has no source
    file to hash, and a point added or relabelled since the last export must be exported."""
    h = hashlib.sha256(np.ascontiguousarray(request.image_zyx).tobytes())
    h.update(json.dumps(request.geometry.to_dict(), sort_keys=True).encode())
    for n in nodules:
        h.update(
            f"{n.nodule_id}|{n.center_lps.tolist()}|{n.label}|{n.mask_ct is not None}".encode()
        )
    return h.hexdigest()


def export_scene_points(
    request: AnalysisRequest,
    markups_node,
    volume_node,
    output_directory: str | Path,
    patient_id: str | None = None,
    segmentation_node=None,
    resume: bool = True,
) -> ExportSummary:
    """Export every requested point of ``markups_node`` (world LPS via ``request``)."""
    nodules = []
    for point in request.points:
        description = markups_node.GetNthControlPointDescription(point.index)
        nodules.append(
            NoduleToExport(
                patient_id=patient_id or request.volume_name,
                nodule_id=point.label,
                center_lps=np.asarray(point.point_lps, dtype=float),
                label=point_label(description, point.label),
                annotation_ids=[point.point_id],
                mask_ct=_segment_mask(segmentation_node, point.label, volume_node),
            )
        )
    loaded = LoadedCt(request.image_zyx, request.geometry, nodules)
    source = Path(f"slicer-scene/{request.volume_name}")
    ct = CtToExport(
        source,
        "slicer-scene",
        lambda: loaded,
        expected_nodules=len(nodules),
        sha256=_scene_sha256(request, nodules),
    )
    return export_patches([ct], output_directory, resume=resume, progress=False, log=lambda _: None)
