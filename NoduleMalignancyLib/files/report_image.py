"""A one-page report image: the nodule in three planes with segmentation and evidence, the
attributes on the LIDC scale, the malignancy probability with its ensemble spread, and the
similar LIDC nodules (core/model/similar.py: the summary line, each neighbour's name, diameter and
mean reader rating, its axial thumbnail when the LIDC data folder is configured)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.model.similar import SUSPICIOUS_ABOVE, summary_line
from ..core.nodule.analysis import NoduleResult
from ..core.nodule.evidence import COMBINED
from ..core.result_schema import (
    GROUP_TITLES,
    field,
    labelled,
    round_half_up,
    score_field,
    shown,
)
from ..core.scope.assessment import NOT_ASSESSED, NOT_ASSESSED_CODES
from .lidc_thumbnails import thumbnail

# The measurements the title line names, as the schema labels them.
TITLE_FIELDS = (
    "volume_mm3",
    "diameter_mm",
    "mean_diameter_mm",
    "mean_hu",
    "calcification_probability",
    "calcified_fraction",
)


def _planes(volume: np.ndarray) -> list[tuple[str, np.ndarray]]:
    d, h, w = (s // 2 for s in volume.shape)
    return [
        ("Axial", volume[d]),
        ("Coronal", volume[::-1, h, :]),
        ("Sagittal", volume[::-1, :, w]),
    ]


def write_report(result: NoduleResult, hu_voi: np.ndarray, path: Path, title: str = "") -> Path:
    """Render the report PNG. ``hu_voi`` is the CT sampled on the result's VOI grid."""
    fig = report_figure(result, hu_voi, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def report_figure(result: NoduleResult, hu_voi: np.ndarray, title: str = "") -> Figure:
    """The report as a matplotlib figure (on its own Agg canvas); :func:`write_report` saves it.
    The similar LIDC nodules get a third row when the point is answered and has neighbours."""
    sz, sy, sx = result.voi_geometry.spacing[::-1]
    evidence = result.evidence_voi[COMBINED]
    lim = float(np.abs(evidence).max()) or 1.0
    similar = result.similar_nodules if result.assessment.answered else []
    # A figure on its own Agg canvas, not pyplot's: pyplot's import (its backend machinery, a
    # third of a cold `analyze`'s matplotlib cost) and global figure registry are not needed.
    fig = Figure(figsize=(15, 10.0 if similar else 7.5), dpi=100)
    FigureCanvasAgg(fig)
    if similar:
        outer = fig.add_gridspec(2, 1, height_ratios=[1.9, 0.72], hspace=0.32, bottom=0.08)
        grid = outer[0].subgridspec(2, 4, height_ratios=[1.0, 0.9], hspace=0.35, wspace=0.3)
    else:
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
    if result.assessment.answered:
        _attribute_bars(fig.add_subplot(grid[1, 0:2]), result)
        _malignancy_bar(fig.add_subplot(grid[0, 3]), result)
        _explanation_waterfall(fig.add_subplot(grid[1, 2:4]), result)
    else:  # not assessed: the reason instead of the malignancy, its parts and the ratings
        _not_assessed_text(fig.add_subplot(grid[1, :]), result)
    if similar:
        _similar_row(fig, outer[1], similar)
    fig.suptitle(title_text(result, title), fontsize=10)
    return fig


def similar_caption(neighbour) -> str:
    """One neighbour under its thumbnail: LIDC name, mean reader diameter, reader rating."""
    rating = round_half_up(neighbour.malignancy_mean, 1)
    suspicious = "rated suspicious" if neighbour.malignancy_mean > SUSPICIOUS_ABOVE else ""
    return (
        f"{neighbour.nodule}\n{round_half_up(neighbour.diameter_mm, 1)} mm, "
        f"reader rating {rating}\n{suspicious}"
    ).rstrip()


def _similar_row(fig, cell, similar) -> None:
    """The similar LIDC nodules: the summary line, then one panel per neighbour (its axial
    thumbnail, lung window, 5 mm bar, when the LIDC data is configured; else its text only)."""
    row = cell.subgridspec(1, len(similar), wspace=0.15)
    for i, neighbour in enumerate(similar):
        ax = fig.add_subplot(row[0, i])
        grey = thumbnail(neighbour.nodule)
        if grey is not None:
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(similar_caption(neighbour), fontsize=8)
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, similar_caption(neighbour), ha="center", va="center", fontsize=8)
    left = fig.axes[-len(similar)]
    note = (
        "axial slice through each centre, lung window, bar 5 mm; "
        if any(ax.images for ax in fig.axes[-len(similar) :])
        else "thumbnails need the LIDC data folder; "
    )
    left.set_title(
        f"{GROUP_TITLES['similar']}: {summary_line(similar)}\n"
        f"nearest first; {note}reader rating = the LIDC readers' mean malignancy rating "
        "(1-5) of that nodule, not the probability above",
        fontsize=9,
        loc="left",
    )


def title_text(result: NoduleResult, title: str = "") -> str:
    """The report's title lines: the assessment's warning first (core/scope/assessment.py), then the
    measurements, Lung-RADS (none when not assessed), the model and any other warning."""
    values = result.values()
    not_assessed = values["assessment"] == NOT_ASSESSED
    lines = []
    if not_assessed:
        lines.append(
            f"{shown('assessment', NOT_ASSESSED).upper()} (no malignancy, no Lung-RADS): "
            f"{values['assessment_reason']}"
        )
    lines += [  # the other warnings (a not-assessed reason is not repeated)
        f"WARNING {code}: {message}"
        for code, message in zip(values["warnings"], values["warning_messages"], strict=True)
        if not (not_assessed and code in NOT_ASSESSED_CODES)
    ]
    lines.append(
        (title + "  " if title else "") + ", ".join(labelled(n, values[n]) for n in TITLE_FIELDS)
    )
    if values["lung_rads"]:
        supports = "; ".join(values["lung_rads_supports_4x"])
        lines.append(
            f"{labelled('lung_rads', values['lung_rads'])} (suggested, baseline screen; "
            f"{values['lung_rads_texture_class']}), the reader decides"
            + (f"; {field('lung_rads_supports_4x').label}: {supports}" if supports else "")
        )
    lines.append(
        f"{labelled('model_version', values['model_version'])} - research use only, "
        "not a diagnostic device"
    )
    return "\n".join(lines)


def _not_assessed_text(ax, result: NoduleResult) -> None:
    """In place of the malignancy: why the point is not assessed."""
    reason = result.assessment.reason
    ax.text(
        0.5,
        0.5,
        f"{shown('assessment', NOT_ASSESSED)}: no malignancy and no Lung-RADS are given.\n"
        + textwrap.fill(reason, 120),
        ha="center",
        va="center",
        fontsize=11,
        wrap=True,
    )
    ax.set_axis_off()


def _attribute_bars(ax, result: NoduleResult) -> None:
    names = list(result.scores)
    vals = [result.scores[n] for n in names]
    labels = [field(score_field(n)).label for n in names]
    ax.barh(labels, [v - 1 for v in vals], left=1, color="#4c72b0")
    for i, (n, v) in enumerate(zip(names, vals, strict=False)):
        ax.text(
            5.05,
            i,
            f"{shown(score_field(n), v, with_unit=False)}  {result.wording[n]}",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(1, 7.2)
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.invert_yaxis()
    ax.set_title(GROUP_TITLES["attributes"], fontsize=9)


def _malignancy_bar(ax, result: NoduleResult) -> None:
    p, sd = result.malignancy_probability, result.malignancy_sd
    ax.bar([0], [100 * p], yerr=[100 * sd], color="#c44e52", capsize=8, width=0.5)
    ax.scatter(
        np.zeros(len(result.fold_malignancy_probabilities)),
        100 * np.asarray(result.fold_malignancy_probabilities),
        color="k",
        s=10,
        zorder=3,
        label="folds",
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_xlim(-1, 1)
    ax.set_xticks([])
    ax.set_title(
        f"{labelled('malignancy_probability', p)} ± {shown('malignancy_sd', sd)}", fontsize=10
    )
    ax.legend(fontsize=7, loc="upper left")


def _explanation_waterfall(ax, result: NoduleResult) -> None:
    """The malignancy logit as a waterfall of its parts (they sum to it exactly)."""
    e = result.explanation
    labels = [field(f"malignancy_logit_{p}").label for p in e.parts]
    values = list(e.parts.values())
    starts = np.concatenate([[0.0], np.cumsum(values)[:-1]])
    colors = ["#999999"] + ["#c44e52" if v > 0 else "#4c72b0" for v in values[1:]]
    ax.barh(labels, values, left=starts, color=colors)
    ax.barh(["= logit"], [e.logit], color="#333333")
    names = [*(f"malignancy_logit_{p}" for p in e.parts), "malignancy_logit"]
    for i, (name, v) in enumerate(zip(names, [*values, e.logit], strict=True)):
        ax.text(
            0.99,
            i,
            shown(name, v, with_unit=False),
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=8,
        )
    ax.axvline(0.0, color="k", linewidth=0.6)
    ax.invert_yaxis()
    ax.set_title(
        f"Why: the malignancy logit {shown('malignancy_logit', e.logit)} = sum of the parts "
        f"(sigmoid {shown('malignancy_probability', e.probability)}); "
        "evidence maps add up to the image part",
        fontsize=9,
    )
