"""A nodule's key image: the axial CT slice where its outline is largest, cropped about it,
the outline drawn, in the lung window, as PNG bytes (the exam report, files/exam_html.py).

Why the CT's own slice and not the analysis' resampled VOI: the referring physician compares it
with what the PACS shows; one crop size for both dates so sizes compare by eye.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.geometry import ImageGeometry
from ..core.nodule.analysis import NoduleResult, map_results_to_ct
from ..core.nodule.voi import sub_grid_offset

LUNG_WINDOW = (-1350.0, 150.0)  # HU: level -600, width 1500
OUTLINE_COLOR = "#ffd400"


def crop_half_width_mm(diameters_mm: list[float]) -> float:
    """Half the crop's side: the larger diameter of the two dates (a side of twice it), at
    least 20 mm."""
    return max([20.0, *(float(d) for d in diameters_mm if d)])


def key_image_png(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    result: NoduleResult,
    half_width_mm: float,
    caption: str = "",
) -> bytes:
    """The PNG of the slice where the outline is largest, ``half_width_mm`` about its centre.

    Rows run front to back and columns right to left of the patient on screen (radiological
    convention, an axial LPS grid); the pixels are square in mm."""
    if result.segmentation_mask_ct is None:
        map_results_to_ct(result, geometry)
    grid, mask = result.ct_grid, result.segmentation_mask_ct
    offset = sub_grid_offset(geometry, grid)  # (x, y, z) of the sub-grid in the CT
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    ys, xs = np.nonzero(mask[k])
    z = int(offset[2]) + k
    cy, cx = ys.mean() + offset[1], xs.mean() + offset[0]
    sx, sy = geometry.spacing[0], geometry.spacing[1]
    ny, nx = image_zyx.shape[1:]
    y0, y1 = (int(np.clip(round(cy + s * half_width_mm / sy), 0, ny)) for s in (-1, 1))
    x0, x1 = (int(np.clip(round(cx + s * half_width_mm / sx), 0, nx)) for s in (-1, 1))
    outline = np.zeros((ny, nx), dtype=float)
    outline[offset[1] : offset[1] + mask.shape[1], offset[0] : offset[0] + mask.shape[2]] = mask[k]
    extent = (0.0, (x1 - x0) * sx, (y1 - y0) * sy, 0.0)  # mm: square pixels
    fig = Figure(figsize=(3.2, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image_zyx[z, y0:y1, x0:x1], cmap="gray", vmin=LUNG_WINDOW[0],
              vmax=LUNG_WINDOW[1], extent=extent, interpolation="nearest")  # fmt: skip
    cols, rows = (np.arange(x1 - x0) + 0.5) * sx, (np.arange(y1 - y0) + 0.5) * sy
    ax.contour(cols, rows, outline[y0:y1, x0:x1], levels=[0.5], colors=[OUTLINE_COLOR],
               linewidths=1.2)  # fmt: skip
    width, height = (x1 - x0) * sx, (y1 - y0) * sy
    box = {"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0}
    ax.plot([4, 14], [height - 4] * 2, color="white", linewidth=2,  # a 10 mm scale
            path_effects=[patheffects.withStroke(linewidth=4, foreground="black")])  # fmt: skip
    ax.text(4, height - 6, "10 mm", color="white", fontsize=8, bbox=box)
    slice_z = geometry.index_to_lps((0, 0, z))[2]
    label = f"{caption}  z {slice_z:.1f} mm".strip()
    ax.text(3, 3, label, color="white", fontsize=8, va="top", bbox=box)
    ax.text(width - 3, height / 2, "L", color="white", fontsize=9, ha="right", bbox=box)
    ax.text(3, height / 2, "R", color="white", fontsize=9, bbox=box)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
