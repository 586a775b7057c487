"""The MRMC analysis for people: empirical ROC curves per reader (PNG) and a Markdown report."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ...core.atomic import atomic_path
from ..markdown import markdown_text
from .analysis import Analysis, Difference, MrmcResult, SingleModality, reader_aucs
from .data import build_study


def empirical_roc(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the empirical ROC, (0, 0) to (1, 1), one point per distinct score.

    Its trapezoidal area is the Mann-Whitney AUC the analysis uses.
    """
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp, fp = np.cumsum(y == 1)[last], np.cumsum(y == 0)[last]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def plot_reader_rocs(rows: Iterable[Mapping] | str | os.PathLike, path: str | os.PathLike) -> Path:
    """One panel per reader with the empirical ROC of each modality (e.g. unaided vs aided), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = build_study(rows)
    auc = reader_aucs(study)
    n = len(study.readers)
    cols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.2 * nrows), squeeze=False)
    for j, reader in enumerate(study.readers):
        ax = axes.flat[j]
        for i, modality in enumerate(study.modalities):
            fpr, tpr = empirical_roc(study.truth, study.scores[i, j])
            ax.plot(fpr, tpr, "-o", ms=2.5, lw=1.4, label=f"{modality} ({auc[i, j]:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        # Names are typed by people: as literal text, never mathtext ("$\\frac{$" crashed it).
        ax.set_title(f"reader {reader}", parse_math=False)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity")
        legend = ax.legend(loc="lower right", fontsize=7, title="modality (AUC)", title_fontsize=7)
        for text in legend.get_texts():
            text.set_parse_math(False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.suptitle(f"Empirical ROC per reader ({study.n_abnormal} abnormal, {study.n_normal} normal)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _difference_table(
    diffs: Sequence[Difference], level: int, by_reader: bool = False
) -> list[str]:
    stat = "z" if diffs and diffs[0].df is None else "t"
    head = "| reader " if by_reader else ""
    lines = [
        f"{head}| comparison | difference | std err | df | {stat} | p | {level}% CI |",
        ("|---" * (7 + by_reader)) + "|",
    ]
    for d in diffs:
        lead = f"| {markdown_text(d.reader)} " if by_reader else ""
        lines.append(
            f"{lead}| {markdown_text(d.comparison)} | {d.difference:.5f} | {d.std_err:.5f} | "
            f"{'z' if d.df is None else _fmt(d.df, 2)} | {d.statistic:.2f} | {d.p_value:.4f} | "
            f"({d.ci_lower:.5f}, {d.ci_upper:.5f}) |"
        )
    return lines


def _single_table(singles: Sequence[SingleModality], level: int) -> list[str]:
    lines = [f"| modality | AUC | std err | df | {level}% CI |", "|---|---|---|---|---|"]
    for s in singles:
        lines.append(
            f"| {markdown_text(s.modality)} | {s.auc:.8f} | {s.std_err:.8f} | "
            f"{'z' if s.df is None else _fmt(s.df, 2)} | ({s.ci_lower:.8f}, {s.ci_upper:.8f}) |"
        )
    return lines


def _analysis_lines(a: Analysis, level: int) -> list[str]:
    t = a.test
    ddf = "" if t.ddf is None else f", {t.ddf:.2f}"
    lines = [
        f"### {a.name.capitalize()}",
        "",
        f"{t.kind}({t.ndf}{ddf}) = {t.statistic:.4f}, p = {t.p_value:.4f} "
        f"(error term {t.error_term:.8f})",
        "",
        *_difference_table(a.differences, level),
        "",
        *_single_table(a.single_modality, level),
        "",
    ]
    if a.single_reader:
        lines += [*_difference_table(a.single_reader, level, by_reader=True), ""]
    return lines


def result_markdown(result: MrmcResult) -> str:
    """A readable report of every figure (reader AUCs, components, analyses 1-3)."""
    level = round(100 * (1 - result.alpha))
    mods = result.modalities
    orc = result.or_components
    lines = [
        "# MRMC ROC analysis (Obuchowski-Rockette, Hillis ddf)",
        "",
        f"{len(mods)} modalities, {len(result.readers)} readers, {result.n_cases} cases "
        f"({result.n_normal} normal, {result.n_abnormal} abnormal); trapezoidal (Mann-Whitney) "
        f"AUC; covariance: {result.covariance}.",
        "",
        result.main_line(),
        "",
        "## Reader AUCs",
        "",
        "| reader | " + " | ".join(map(markdown_text, mods)) + " |",
        "|---" * (len(mods) + 1) + "|",
        *(
            f"| {markdown_text(r)} | " + " | ".join(f"{result.auc[m][r]:.8f}" for m in mods) + " |"
            for r in result.readers
        ),
        "| mean | " + " | ".join(f"{result.modality_auc[m]:.8f}" for m in mods) + " |",
        "",
        "## Obuchowski-Rockette components",
        "",
        "| component | estimate | correlation |",
        "|---|---|---|",
        f"| Var(R) | {orc.var_r:.8f} | |",
        f"| Var(T*R) | {orc.var_tr:.8f} | |",
        f"| Cov1 | {orc.cov1:.8f} | {_fmt(orc.corr1, 8)} |",
        f"| Cov2 | {orc.cov2:.8f} | {_fmt(orc.corr2, 8)} |",
        f"| Cov3 | {orc.cov3:.8f} | {_fmt(orc.corr3, 8)} |",
        f"| Var(Error) | {orc.var_error:.8f} | |",
        "",
        "## Analyses",
        "",
    ]
    for a in (
        result.random_readers_random_cases,
        result.fixed_readers_random_cases,
        result.random_readers_fixed_cases,
    ):
        lines += _analysis_lines(a, level)
    return "\n".join(lines)
