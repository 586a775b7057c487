"""Write one analysis to a folder: segmentation, evidence maps, result.json, report image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.config import VoiConfig
from ..core.geometry import ImageGeometry
from ..core.nodule.analysis import NoduleResult
from ..core.nodule.voi import sample_voi
from .report_image import write_report
from .writers import write_json, write_segmentation, write_volume


def write_analysis(
    result: NoduleResult,
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    out_dir: Path,
    voi_config: VoiConfig,
    name: str = "nodule",
    identity: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Files of one analyzed nodule; returns their paths by kind. ``identity``: the series,
    patient and study date read (files/ct_input.input_identity), recorded in the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    grid = result.ct_grid
    mask = result.segmentation_mask_ct.astype(np.uint8)
    files["segmentation"] = write_segmentation(mask, grid, out / f"{name}.seg.nrrd", name)
    files["mask"] = write_volume(mask, grid, out / f"{name}_mask.nii.gz")
    for scale, m in result.evidence_ct.items():
        files[f"evidence_{scale}"] = write_volume(m, grid, out / f"{name}_evidence_{scale}.nrrd")
    hu = sample_voi(image_zyx, geometry, result.point_lps, voi_config).hu
    files["report"] = write_report(result, hu, out / f"{name}_report.png", title=name)
    summary = result.summary() | (identity or {}) | {"files": {k: p.name for k, p in files.items()}}
    files["json"] = write_json(
        summary, out / "result.json" if name == "nodule" else out / f"{name}.json"
    )
    return files
