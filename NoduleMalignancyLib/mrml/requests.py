"""Plain records between the logic's three steps (prepare, compute, apply) and its callers.

Why plain: :meth:`~.logic.NoduleMalignancyLogic.compute` runs on a worker thread and must not
touch MRML; everything it needs is copied here on the main thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.geometry import ImageGeometry
from ..core.nodule.analysis import NoduleResult

__all__ = ["AnalysisOutput", "AnalysisRequest", "PointRequest"]


@dataclass(frozen=True)
class PointRequest:
    """One markups point to analyze, as read on the main thread."""

    point_id: str  # markups control point ID (stable across moves and renames)
    label: str
    index: int  # control point index at read time
    position_ras: tuple[float, float, float]  # world RAS (transforms hardened)
    point_lps: tuple[float, float, float]  # the same point in world LPS


@dataclass
class AnalysisRequest:
    """Everything :meth:`NoduleMalignancyLogic.compute` needs: plain arrays, no MRML."""

    volume_id: str
    markups_id: str
    volume_name: str
    image_zyx: np.ndarray  # (z, y, x) view of the volume's voxels
    geometry: ImageGeometry  # world LPS geometry (parent transform hardened)
    local_geometry: ImageGeometry  # the volume's own IJKToRAS (what the outputs use)
    points: list[PointRequest]
    # series_uid, patient_id, study_date of the CT (mrml/identity.py): the table rows say
    # whose CT they were computed on.
    identity: dict[str, str] = field(default_factory=dict)


@dataclass
class AnalysisOutput:
    """What :meth:`NoduleMalignancyLogic.analyze` returns: results and the MRML nodes."""

    points: list[PointRequest]
    results: list[NoduleResult]
    segmentation_node: object
    table_node: object
    segment_ids: dict[str, str]  # point ID -> segment ID
    rows: dict[str, int]  # point ID -> table row
    evidence_nodes: dict[str, dict[str, object]]  # point ID -> scale -> volume node
    timings_s: dict[str, float] = field(default_factory=dict)
