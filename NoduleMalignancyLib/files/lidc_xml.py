"""LIDC-IDRI reader annotations (the per-scan XML): outlines and their consensus mask.

Why here: the self-test compares the model's segmentation with the readers' consensus on the
sample CT, and the LIDC XML is a file format like any other (no MRML, no torch).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

__all__ = ["read_reader_contours", "reader_consensus_mask", "reader_nodule_points_lps"]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element, name: str):
    return [c for c in element if _local(c.tag) == name]


def _text(element, name: str) -> str:
    found = _children(element, name)
    return found[0].text.strip() if found and found[0].text else ""


def read_reader_contours(xml_path: str | Path) -> list[list[list[tuple[float, bool, np.ndarray]]]]:
    """Every reader's nodule outlines: ``[session][nodule][roi] = (z_mm, inclusion, xy)``.

    ``xy`` is an (N, 2) int array of the edge pixels (column, row). Only nodules with outlines
    (>= 3 mm, more than one edge point) are kept.
    """
    root = ET.parse(str(xml_path)).getroot()
    sessions = []
    for session in root.iter():
        if _local(session.tag) != "readingSession":
            continue
        nodules = []
        for nodule in _children(session, "unblindedReadNodule"):
            rois = []
            for roi in _children(nodule, "roi"):
                xy = np.array(
                    [
                        (int(_text(e, "xCoord")), int(_text(e, "yCoord")))
                        for e in _children(roi, "edgeMap")
                    ],
                    dtype=int,
                ).reshape(-1, 2)
                inclusion = _text(roi, "inclusion").upper() != "FALSE"
                rois.append((float(_text(roi, "imageZposition")), inclusion, xy))
            if rois and max(len(r[2]) for r in rois) > 1:
                nodules.append(rois)
        sessions.append(nodules)
    return sessions


def _outline_points_lps(rois, geometry) -> np.ndarray:
    """World LPS of a reader nodule's inclusion outline pixels (axial slices, LIDC)."""
    origin = np.asarray(geometry.origin, dtype=float)
    pts = []
    for z, inclusion, xy in rois:
        if not inclusion:
            continue
        k = geometry.lps_to_index([origin[0], origin[1], z])[2]
        pts.append(np.column_stack([xy, np.full(len(xy), k)]))
    if not pts:
        return np.zeros((0, 3))
    return geometry.index_to_lps(np.concatenate(pts).astype(float))


def reader_nodule_points_lps(
    xml_path: str | Path, geometry, min_link_mm: float = 3.0
) -> list[tuple[str, tuple[float, float, float], int]]:
    """One point per nodule the readers outlined: ``[(name, (x, y, z) world LPS, readers)]``.

    Each reader's outline centroid; two readers' nodules are one when their centroids lie
    within the larger one's radius (half its widest outline extent, at least ``min_link_mm``);
    the point is the mean of the cluster's centroids (as the data folder's points file).
    Names ``nodule_1``, ``nodule_2``, ... in the order first outlined.
    """
    clusters: list[list[tuple[np.ndarray, float]]] = []
    for nodules in read_reader_contours(xml_path):
        for rois in nodules:
            pts = _outline_points_lps(rois, geometry)
            if len(pts) == 0:
                continue
            centre = pts.mean(0)
            radius = max(min_link_mm, 0.5 * float(np.ptp(pts[:, :2], axis=0).max()))
            for cluster in clusters:
                mean = np.mean([c for c, _ in cluster], axis=0)
                reach = max(radius, max(r for _, r in cluster))
                if np.linalg.norm(mean - centre) <= reach:
                    cluster.append((centre, radius))
                    break
            else:
                clusters.append([(centre, radius)])
    return [
        (
            f"nodule_{i + 1}",
            tuple(float(v) for v in np.mean([c for c, _ in cluster], axis=0)),
            len(cluster),
        )
        for i, cluster in enumerate(clusters)
    ]


def _fill_polygon(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (columns, rows) inside an outline (even-odd rule) plus the outline pixels."""
    xs, ys = xy[:, 0], xy[:, 1]
    x0, y0 = xs.min(), ys.min()
    gx, gy = np.meshgrid(np.arange(x0, xs.max() + 1), np.arange(y0, ys.max() + 1))
    inside = np.zeros(gx.shape, dtype=bool)
    xa, ya = xs.astype(float), ys.astype(float)
    xb, yb = np.roll(xa, 1), np.roll(ya, 1)
    for x1, y1, x2, y2 in zip(xa, ya, xb, yb, strict=True):
        if y1 == y2:
            continue
        crosses = (y1 > gy) != (y2 > gy)
        x_at = (x2 - x1) * (gy - y1) / (y2 - y1) + x1
        inside ^= crosses & (gx < x_at)
    inside[ys - y0, xs - x0] = True
    rows, cols = np.nonzero(inside)
    return cols + x0, rows + y0


def reader_consensus_mask(
    xml_path: str | Path,
    geometry,
    point_lps,
    level: float = 0.5,
    max_distance_mm: float = 10.0,
) -> tuple[np.ndarray, int]:
    """The readers' consensus mask of the nodule at ``point_lps`` on the CT grid (z, y, x).

    Each reader's nodule nearest to the point (outline centroid within ``max_distance_mm``) is
    rasterised slice by slice (inclusion outlines filled, exclusion outlines removed); a voxel
    is in the consensus when at least ``level`` of the matched readers include it. Returns the
    mask and the number of matched readers. Assumes axial slices (LIDC).
    """
    point_lps = np.asarray(point_lps, dtype=float)
    shape = geometry.shape_zyx
    votes = np.zeros(shape, dtype=np.int16)
    readers = 0
    origin = np.asarray(geometry.origin, dtype=float)
    for nodules in read_reader_contours(xml_path):
        best, best_distance = None, max_distance_mm
        for rois in nodules:
            pts = _outline_points_lps(rois, geometry)
            if len(pts) == 0:
                continue
            centre = pts.mean(0)
            distance = float(np.linalg.norm(centre - point_lps))
            if distance < best_distance:
                best, best_distance = rois, distance
        if best is None:
            continue
        readers += 1
        mask = np.zeros(shape, dtype=bool)
        for z, inclusion, xy in sorted(best, key=lambda r: not r[1]):  # inclusions first
            k_float = geometry.lps_to_index([origin[0], origin[1], z])[2]
            k = int(round(k_float))
            if abs(k - k_float) > 0.1 or not 0 <= k < shape[0] or len(xy) < 2:
                continue
            cols, rows = _fill_polygon(xy)
            keep = (cols >= 0) & (cols < shape[2]) & (rows >= 0) & (rows < shape[1])
            mask[k, rows[keep], cols[keep]] = inclusion
        votes += mask
    if readers == 0:
        return np.zeros(shape, dtype=bool), 0
    return votes >= max(1, int(np.ceil(level * readers - 1e-9))), readers
