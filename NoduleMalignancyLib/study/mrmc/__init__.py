"""Multi-reader multi-case ROC analysis of a reading study (docs/DESIGN.md §14).

Cut at its seams: ``data.py`` (the long-format rows, checked, and the score cube),
``analysis.py`` (Obuchowski-Rockette with Hillis' degrees of freedom: AUCs, covariances,
analyses 1-3), ``imrmc.py`` (the iMRMC text layout, both ways) and ``report.py`` (the ROC plot and
the Markdown report). Callers import from here.
"""

from .analysis import (
    COVARIANCES,
    Analysis,
    Anova,
    DbmComponents,
    Difference,
    GlobalTest,
    MrmcResult,
    OrComponents,
    SingleModality,
    analyze,
    anova,
    delong_covariance,
    jackknife_covariance,
    reader_aucs,
)
from .data import Study, build_study, load_rows
from .imrmc import read_imrmc, write_imrmc
from .report import empirical_roc, plot_reader_rocs, result_markdown

__all__ = [
    "COVARIANCES",
    "Analysis",
    "Anova",
    "DbmComponents",
    "Difference",
    "GlobalTest",
    "MrmcResult",
    "OrComponents",
    "SingleModality",
    "Study",
    "analyze",
    "anova",
    "build_study",
    "delong_covariance",
    "empirical_roc",
    "jackknife_covariance",
    "load_rows",
    "plot_reader_rocs",
    "read_imrmc",
    "reader_aucs",
    "result_markdown",
    "write_imrmc",
]
