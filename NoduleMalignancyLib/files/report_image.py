"""A one-page report image: the nodule in three planes with segmentation and evidence, the
attributes on the LIDC scale, and the malignancy probability with its ensemble spread."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..core.analysis import NoduleResult
from ..core.evidence import COMBINED


def _planes(volume: np.ndarray) -> list[tuple[str, np.ndarray]]:
    d, h, w = (s // 2 for s in volume.shape)
    return [
        ("Axial", volume[d]),
        ("Coronal", volume[::-1, h, :]),
        ("Sagittal", volume[::-1, :, w]),
    ]


def write_report(result: NoduleResult, hu_voi: np.ndarray, path: Path, title: str = "") -> Path:
    """Render the report PNG. ``hu_voi`` is the CT sampled on the result's VOI grid."""
    sz, sy, sx = result.voi_geometry.spacing[::-1]
    evidence = result.evidence_voi[COMBINED]
    lim = float(np.abs(evidence).max()) or 1.0
    fig = plt.figure(figsize=(15, 7.5), dpi=100)
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 0.9], hspace=0.35, wspace=0.3)
    aspects = {"Axial": sy / sx, "Coronal": sz / sx, "Sagittal": sz / sy}
    for col, ((name, img), (_, seg), (_, ev)) in enumerate(
        zip(
            _planes(hu_voi),
            _planes(result.segmentation_mask_voi.astype(float)),
            _planes(evidence),
            strict=False,
        )
    ):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(img, cmap="gray", vmin=-1000, vmax=400, aspect=aspects[name])
        masked = np.ma.masked_where(np.abs(ev) < 0.05 * lim, ev)
        ax.imshow(masked, cmap="coolwarm", vmin=-lim, vmax=lim, alpha=0.5, aspect=aspects[name])
        if seg.any():
            ax.contour(seg, levels=[0.5], colors=["#ffb000"], linewidths=1.2)
        ax.set_title(f"{name} (evidence: red = for malignancy)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, 0:2])
    _attribute_bars(ax, result)
    _malignancy_bar(fig.add_subplot(grid[0, 3]), result)
    _explanation_waterfall(fig.add_subplot(grid[1, 2:4]), result)
    fig.suptitle(
        (title + "  " if title else "")
        + f"volume {result.volume_mm3:.0f} mm³, diameter {result.diameter_mm:.1f} mm "
        f"(mean {result.mean_diameter_mm:.1f} mm), {result.mean_hu:.0f} HU, "
        f"calcification p={result.calcification_probability:.2f} "
        f"({100 * result.calcified_fraction:.0f} % of voxels >= 200 HU)"
        + (
            f"\nLung-RADS (suggested): {result.lung_rads.category} - baseline screen, "
            f"{result.lung_rads.texture_class}, the reader decides"
            + ("; could support 4X: spiculation" if result.lung_rads.supports_4x else "")
            if result.lung_rads
            else ""
        )
        + f"\nmodel {result.model_version} - research use only, not a diagnostic device"
        + "".join(f"\nWARNING {w.code}: {w.message}" for w in result.warnings),
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _attribute_bars(ax, result: NoduleResult) -> None:
    names = list(result.scores)
    vals = [result.scores[n] for n in names]
    ax.barh(names, [v - 1 for v in vals], left=1, color="#4c72b0")
    for i, (n, v) in enumerate(zip(names, vals, strict=False)):
        ax.text(
            5.05,
            i,
            f"{v:.1f}  {result.wording[n]}",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(1, 7.2)
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.invert_yaxis()
    ax.set_title("LIDC attributes (1-5 scale, fold mean)", fontsize=9)


def _malignancy_bar(ax, result: NoduleResult) -> None:
    p, sd = result.malignancy_probability, result.malignancy_sd
    ax.bar([0], [p], yerr=[sd], color="#c44e52", capsize=8, width=0.5)
    ax.scatter(
        np.zeros(len(result.fold_malignancy_probabilities)),
        result.fold_malignancy_probabilities,
        color="k",
        s=10,
        zorder=3,
        label="folds",
    )
    ax.set_ylim(0, 1)
    ax.set_xlim(-1, 1)
    ax.set_xticks([])
    ax.set_title(f"Malignancy {100 * p:.0f} % (sd {100 * sd:.0f})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _explanation_waterfall(ax, result: NoduleResult) -> None:
    """The malignancy logit as a waterfall of its parts (they sum to it exactly)."""
    e = result.explanation
    labels = [p.replace("_", " ") for p in e.parts]
    values = list(e.parts.values())
    starts = np.concatenate([[0.0], np.cumsum(values)[:-1]])
    colors = ["#999999"] + ["#c44e52" if v > 0 else "#4c72b0" for v in values[1:]]
    ax.barh(labels, values, left=starts, color=colors)
    ax.barh(["= logit"], [e.logit], color="#333333")
    for i, v in enumerate([*values, e.logit]):
        ax.text(
            0.99,
            i,
            f"{v:+.2f}",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=8,
        )
    ax.axvline(0.0, color="k", linewidth=0.6)
    ax.invert_yaxis()
    ax.set_title(
        f"Why: malignancy logit {e.logit:+.2f} = sum of parts (p = {100 * e.probability:.0f} %); "
        "evidence maps add up to the image part",
        fontsize=9,
    )
