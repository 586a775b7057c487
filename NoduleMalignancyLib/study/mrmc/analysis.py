"""Multi-reader multi-case ROC analysis: Obuchowski-Rockette with Hillis' degrees of freedom.

Why here and in numpy: the reading studies (docs/DESIGN.md §14) end in this analysis, and the
tools that implement it (the Iowa OR-DBM MRMC program, the R packages RJafroc and MRMCaov, the
FDA's iMRMC) are not Python. The figures are checked against the Iowa program's published output
on the Van Dyke data (``Testing/test_mrmc.py``).

The method, in the Iowa program's terms:

* each reader x modality AUC is the trapezoidal area (Mann-Whitney, ties count 1/2);
* the error covariance of those AUCs comes from the jackknife over cases (the default, as the
  Iowa program does: with it the analysis equals the Dorfman-Berbaum-Metz one, Hillis 2005) or
  from DeLong et al. (1988) structural components (``covariance="delong"``: no leave-one-out, a
  little smaller for small studies);
* Obuchowski & Rockette (1995) average those covariances into Var(Error), Cov1 (same reader,
  other modality), Cov2 (other reader, same modality), Cov3 (other reader and modality) and,
  with the modality x reader ANOVA of the AUCs, into Var(R) and Var(T*R);
* analysis 1 (random readers, random cases) tests with Hillis' (2007, 2008) denominator degrees
  of freedom; analysis 2 (fixed readers) with a chi-square / z; analysis 3 (fixed cases) is the
  modality x reader ANOVA alone.

Input is a long table, one row per reader x case x modality: ``reader,case,modality,score,truth``
(``rating`` is read as ``score``). Labels are kept as text, so reader ``1`` and ``"1"`` are one
reader; modalities keep the order in which they first appear (differences are first minus
second), unless ``modalities=`` gives the order.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from ..core.atomic import atomic_path

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
    "analyse",
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

COVARIANCES = ("jackknife", "delong")
SCORE_COLUMNS = ("score", "rating")
IMRMC_BEGIN = "BEGIN DATA:"
IMRMC_TRUTH_READER = "-1"
IMRMC_TRUTH_READERS = ("-1", "truth")  # the R package's data frames say "truth"


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Study:
    """A complete factorial reading study: every reader scored every case in every modality."""

    readers: tuple[str, ...]
    modalities: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray  # (cases,) 0 = normal, 1 = abnormal
    scores: np.ndarray  # (modalities, readers, cases)

    @property
    def n_abnormal(self) -> int:
        return int(self.truth.sum())

    @property
    def n_normal(self) -> int:
        return len(self.truth) - self.n_abnormal


def _cell(row: Mapping, names: Sequence[str], number: int):
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    raise ValueError(f"row {number}: no {' or '.join(names)} column (got {sorted(row)})")


def _label(value, what: str, number: int) -> str:
    text = str(value).strip()
    if not text or any(ch in text for ch in ",\n\r"):
        raise ValueError(f"row {number}: {what} {value!r} is empty or holds a comma / newline")
    return text


def _truth(value, number: int) -> int:
    try:
        number_value = float(value)
    except (TypeError, ValueError):
        number_value = math.nan
    if number_value not in (0.0, 1.0):
        raise ValueError(f"row {number}: truth must be 0 (normal) or 1 (abnormal), got {value!r}")
    return int(number_value)


def _score(value, number: int) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise ValueError(f"row {number}: score must be a finite number, got {value!r}")
    return score


def _normalise(row: Mapping, number: int) -> dict:
    """One input row as ``{reader, case, modality, score, truth}`` (labels as text)."""
    return {
        "reader": _label(_cell(row, ("reader",), number), "reader", number),
        "case": _label(_cell(row, ("case",), number), "case", number),
        "modality": _label(_cell(row, ("modality",), number), "modality", number),
        "score": _score(_cell(row, SCORE_COLUMNS, number), number),
        "truth": _truth(_cell(row, ("truth",), number), number),
    }


def load_rows(source: str | os.PathLike | Iterable[Mapping]) -> list[dict]:
    """Rows from a list of dicts, a long-format CSV or an iMRMC file, normalised and checked.

    Why one entry point: the CLI, the plot and the analysis all accept any of the three.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if _is_imrmc(path):
            return read_imrmc(path)
        with open(path, newline="", encoding="utf-8") as f:
            source = list(csv.DictReader(f))
    rows = [_normalise(row, number) for number, row in enumerate(source, start=1)]
    if not rows:
        raise ValueError("no rows: a reading study needs reader,case,modality,score,truth rows")
    return rows


def _first_seen(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _case_truth(rows: list[dict]) -> dict[str, int]:
    truth: dict[str, int] = {}
    for row in rows:
        previous = truth.setdefault(row["case"], row["truth"])
        if previous != row["truth"]:
            raise ValueError(f"case {row['case']}: truth is not constant (both 0 and 1 given)")
    return truth


def _modality_order(rows: list[dict], modalities: Sequence | None) -> tuple[str, ...]:
    seen = _first_seen(row["modality"] for row in rows)
    if modalities is None:
        return seen
    order = tuple(str(m).strip() for m in modalities)
    if sorted(order) != sorted(seen):
        raise ValueError(f"modalities={list(order)} do not match the data's {list(seen)}")
    return order


def _check_design(study: Study) -> None:
    if len(study.readers) < 2:
        raise ValueError(f"an MRMC analysis needs at least 2 readers, got {len(study.readers)}")
    if len(study.modalities) < 2:
        raise ValueError(
            f"an MRMC analysis compares at least 2 modalities, got {len(study.modalities)}"
        )
    if study.n_abnormal == 0 or study.n_normal == 0:
        raise ValueError("truth has one class only: an AUC needs normal and abnormal cases")
    if study.n_abnormal < 2 or study.n_normal < 2:
        raise ValueError(
            f"need at least 2 normal and 2 abnormal cases (got {study.n_normal} normal, "
            f"{study.n_abnormal} abnormal) for the case covariance"
        )


def build_study(rows: Iterable[Mapping] | str | os.PathLike, modalities=None) -> Study:
    """The score cube (modality, reader, case) and the truth per case, with the design checked.

    Why strict: the Obuchowski-Rockette analysis here assumes the fully crossed design; a reader
    who missed a case would silently bias a padded or dropped cell.
    """
    table = load_rows(rows)
    readers = _first_seen(row["reader"] for row in table)
    mods = _modality_order(table, modalities)
    truth_of = _case_truth(table)
    cases = tuple(truth_of)
    index = (
        {m: i for i, m in enumerate(mods)},
        {r: j for j, r in enumerate(readers)},
        {c: k for k, c in enumerate(cases)},
    )
    scores = np.full((len(mods), len(readers), len(cases)), np.nan)
    seen = np.zeros(scores.shape, dtype=bool)
    for row in table:
        at = (index[0][row["modality"]], index[1][row["reader"]], index[2][row["case"]])
        if seen[at]:
            raise ValueError(
                f"reader {row['reader']} scored case {row['case']} twice in modality "
                f"{row['modality']}"
            )
        seen[at], scores[at] = True, row["score"]
    if not seen.all():
        i, j, k = np.argwhere(~seen)[0]
        raise ValueError(
            f"reader {readers[j]} has no score for case {cases[k]} in modality {mods[i]} "
            f"({int((~seen).sum())} reader x case x modality cells missing; the design must be "
            "fully crossed)"
        )
    study = Study(readers, mods, cases, np.array([truth_of[c] for c in cases]), scores)
    _check_design(study)
    return study


# --------------------------------------------------------------------------- AUCs and covariance


def _placements(study: Study) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components, from mid-ranks (no n1 x n0 comparison matrix).

    ``v10[i, j, k]``: share of normal cases abnormal case k outscores (ties 1/2);
    ``v01[i, j, l]``: share of abnormal cases that outscore normal case l. Both average to the AUC.
    """
    abnormal = study.truth == 1
    ranks = stats.rankdata(study.scores, axis=-1)
    x1, x0 = study.scores[..., abnormal], study.scores[..., ~abnormal]
    v10 = (ranks[..., abnormal] - stats.rankdata(x1, axis=-1)) / study.n_normal
    v01 = 1.0 - (ranks[..., ~abnormal] - stats.rankdata(x0, axis=-1)) / study.n_abnormal
    return v10, v01


def reader_aucs(study: Study) -> np.ndarray:
    """(modalities, readers) trapezoidal AUCs: Mann-Whitney with ties counted 1/2."""
    return _placements(study)[0].mean(axis=-1)


def _jackknife_aucs(study: Study) -> np.ndarray:
    """(modalities, readers, cases): each AUC with one case left out, in closed form."""
    v10, v01 = _placements(study)
    auc = v10.mean(axis=-1, keepdims=True)
    n1, n0 = study.n_abnormal, study.n_normal
    out = np.empty(study.scores.shape)
    abnormal = study.truth == 1
    out[..., abnormal] = (n1 * auc - v10) / (n1 - 1)
    out[..., ~abnormal] = (n0 * auc - v01) / (n0 - 1)
    return out


def jackknife_covariance(study: Study) -> np.ndarray:
    """(t, r, t, r) jackknife covariance of the AUCs over cases, scaled (c-1)/c as Iowa's.

    Why the default: it is the Iowa program's choice, and with it the OR analysis equals DBM's.
    """
    pseudo = _jackknife_aucs(study)
    t, r, c = pseudo.shape
    dev = (pseudo - pseudo.mean(axis=-1, keepdims=True)).reshape(t * r, c)
    return ((c - 1) / c * dev @ dev.T).reshape(t, r, t, r)


def delong_covariance(study: Study) -> np.ndarray:
    """(t, r, t, r) DeLong et al. (1988) covariance: S10 / n1 + S01 / n0.

    Why offered: the usual large-sample estimate, with no leave-one-out; on Van Dyke its
    Var(Error) is about 1.3 % below the jackknife's (whose n / (n - 1) factors inflate it).
    """
    v10, v01 = _placements(study)
    t, r = v10.shape[:2]
    s10 = np.atleast_2d(np.cov(v10.reshape(t * r, -1)))
    s01 = np.atleast_2d(np.cov(v01.reshape(t * r, -1)))
    return (s10 / study.n_abnormal + s01 / study.n_normal).reshape(t, r, t, r)


# --------------------------------------------------------------------------- variance components


@dataclass(frozen=True)
class Anova:
    """The modality (T) x reader (R) ANOVA of the AUCs, and the reader ANOVA per modality."""

    ss_t: float
    ss_r: float
    ss_tr: float
    df_t: int
    df_r: int
    df_tr: int
    ms_t: float
    ms_r: float
    ms_tr: float
    ms_r_single: dict[str, float]  # modality -> MS(R) of that modality's reader AUCs


@dataclass(frozen=True)
class OrComponents:
    """Obuchowski-Rockette variance components and error covariances (ANOVA: may be < 0)."""

    var_r: float
    var_tr: float
    cov1: float
    cov2: float
    cov3: float
    var_error: float
    corr1: float
    corr2: float
    corr3: float


@dataclass(frozen=True)
class DbmComponents:
    """The corresponding Dorfman-Berbaum-Metz components (Hillis 2005: c x the OR covariances)."""

    var_r: float
    var_c: float
    var_tr: float
    var_tc: float
    var_rc: float
    var_trc_error: float


def anova(auc: np.ndarray, modalities: Sequence[str]) -> Anova:
    """Sums of squares and mean squares of the (modalities, readers) AUC table."""
    t, r = auc.shape
    by_t, by_r, grand = auc.mean(axis=1), auc.mean(axis=0), auc.mean()
    ss_t = r * float(((by_t - grand) ** 2).sum())
    ss_r = t * float(((by_r - grand) ** 2).sum())
    ss_tr = float(((auc - by_t[:, None] - by_r[None, :] + grand) ** 2).sum())
    df_t, df_r, df_tr = t - 1, r - 1, (t - 1) * (r - 1)
    single = {m: float(v) for m, v in zip(modalities, auc.var(axis=1, ddof=1), strict=True)}
    return Anova(
        ss_t=ss_t, ss_r=ss_r, ss_tr=ss_tr, df_t=df_t, df_r=df_r, df_tr=df_tr,
        ms_t=ss_t / df_t, ms_r=ss_r / df_r, ms_tr=ss_tr / df_tr, ms_r_single=single,
    )  # fmt: skip


def _masked_mean(cov: np.ndarray, same_modality: bool, same_reader: bool) -> float:
    t, r = cov.shape[:2]
    mt = np.eye(t, dtype=bool) if same_modality else ~np.eye(t, dtype=bool)
    mr = np.eye(r, dtype=bool) if same_reader else ~np.eye(r, dtype=bool)
    return float(cov[mt[:, None, :, None] & mr[None, :, None, :]].mean())


def _ratio(a: float, b: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def or_components(cov: np.ndarray, table: Anova) -> OrComponents:
    """Var(Error), Cov1-3 averaged from the covariance; Var(R), Var(T*R) from the mean squares."""
    t = cov.shape[0]
    var = _masked_mean(cov, True, True)
    cov1 = _masked_mean(cov, False, True)
    cov2 = _masked_mean(cov, True, False)
    cov3 = _masked_mean(cov, False, False)
    var_tr = table.ms_tr - var + cov1 + cov2 - cov3
    var_r = (table.ms_r - var - (t - 1) * cov1 + cov2 + (t - 1) * cov3 - var_tr) / t
    return OrComponents(
        var_r=var_r, var_tr=var_tr, cov1=cov1, cov2=cov2, cov3=cov3, var_error=var,
        corr1=_ratio(cov1, var), corr2=_ratio(cov2, var), corr3=_ratio(cov3, var),
    )  # fmt: skip


def dbm_components(orc: OrComponents, n_cases: int) -> DbmComponents:
    """DBM's components from OR's (exact for the jackknife covariance)."""
    c = n_cases
    return DbmComponents(
        var_r=orc.var_r,
        var_c=c * orc.cov3,
        var_tr=orc.var_tr,
        var_tc=c * (orc.cov2 - orc.cov3),
        var_rc=c * (orc.cov1 - orc.cov3),
        var_trc_error=c * (orc.var_error - orc.cov1 - orc.cov2 + orc.cov3),
    )


# --------------------------------------------------------------------------- the three analyses


@dataclass(frozen=True)
class GlobalTest:
    """H0: every modality has the same reader-averaged AUC."""

    kind: str  # "F" (analyses 1 and 3) or "X2" (analysis 2)
    statistic: float
    ndf: int
    ddf: float | None  # denominator df of the F; None for the chi-square
    p_value: float
    error_term: float  # the denominator (a mean square, or the X2's variance term)


@dataclass(frozen=True)
class Difference:
    """One pairwise modality difference (first minus second), its SE, test and CI."""

    comparison: str  # "1 - 2"
    modality_a: str
    modality_b: str
    difference: float
    std_err: float
    df: float | None  # t statistic's df; None where it is a z
    statistic: float  # t or z
    p_value: float
    ci_lower: float
    ci_upper: float
    reader: str | None = None  # single-reader comparisons (analysis 2 d)
    var_error: float | None = None
    cov1: float | None = None


@dataclass(frozen=True)
class SingleModality:
    """One modality's reader-averaged AUC with its own SE and CI."""

    modality: str
    auc: float
    std_err: float
    df: float | None  # None where the CI is a z interval
    ci_lower: float
    ci_upper: float
    ms_r: float
    cov2: float | None = None  # None where cases are fixed (analysis 3)
    var_error: float | None = None


@dataclass(frozen=True)
class Analysis:
    """One of the Iowa program's analyses 1-3."""

    name: str
    test: GlobalTest
    differences: tuple[Difference, ...]
    single_modality: tuple[SingleModality, ...]
    single_reader: tuple[Difference, ...] = ()


@dataclass(frozen=True)
class MrmcResult:
    """Every figure of an OR-DBM MRMC style report, named as that report names them."""

    covariance: str
    alpha: float
    readers: tuple[str, ...]
    modalities: tuple[str, ...]
    n_cases: int
    n_normal: int
    n_abnormal: int
    auc: dict[str, dict[str, float]]  # modality -> reader -> AUC
    modality_auc: dict[str, float]  # reader-averaged
    anova: Anova
    or_components: OrComponents
    dbm_components: DbmComponents
    random_readers_random_cases: Analysis
    fixed_readers_random_cases: Analysis
    random_readers_fixed_cases: Analysis

    def to_dict(self) -> dict:
        """Plain JSON-ready data (NaN and infinities as None)."""
        return _plain(dataclasses.asdict(self))

    def main_line(self) -> str:
        """The headline: analysis 1's F test and each difference with its CI."""
        a = self.random_readers_random_cases
        level = round(100 * (1 - self.alpha))
        diffs = "; ".join(
            f"{d.comparison} = {d.difference:.5f} ({level}% CI {d.ci_lower:.5f} to "
            f"{d.ci_upper:.5f})"
            for d in a.differences
        )
        return (
            f"OR random readers and cases ({self.covariance}): F({a.test.ndf}, "
            f"{a.test.ddf:.2f}) = {a.test.statistic:.2f}, p = {a.test.p_value:.4f}; {diffs}"
        )


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _pairs(modalities: Sequence[str]) -> list[tuple[int, int]]:
    return list(combinations(range(len(modalities)), 2))


def _t_difference(a, b, mods, diff, se, df, alpha, **extra) -> Difference:
    """A difference tested with a t (df given) or a z (df None), two-sided."""
    dist = stats.norm if df is None else stats.t(df)
    stat = _ratio(diff, se)
    half = float(dist.ppf(1 - alpha / 2)) * se
    return Difference(
        comparison=f"{mods[a]} - {mods[b]}", modality_a=mods[a], modality_b=mods[b],
        difference=diff, std_err=se, df=df, statistic=stat,
        p_value=float(2 * dist.sf(abs(stat))), ci_lower=diff - half, ci_upper=diff + half,
        **extra,
    )  # fmt: skip


def _differences(auc, se, df, mods, alpha) -> tuple[Difference, ...]:
    """Every pairwise difference of the reader-averaged AUCs, all with one SE and df."""
    means = auc.mean(axis=1)
    return tuple(
        _t_difference(a, b, mods, float(means[a] - means[b]), se, df, alpha)
        for a, b in _pairs(mods)
    )


def _single(modality, auc, se, df, alpha, ms_r, cov2=None, var_error=None) -> SingleModality:
    quantile = stats.norm.ppf(1 - alpha / 2) if df is None else stats.t.ppf(1 - alpha / 2, df)
    half = float(quantile) * se
    return SingleModality(modality, auc, se, df, auc - half, auc + half, ms_r, cov2, var_error)


def _per_modality(cov: np.ndarray, i: int) -> tuple[float, float]:
    """Var(Error) and Cov2 of one modality alone."""
    one = cov[i : i + 1, :, i : i + 1, :]
    return _masked_mean(one, True, True), _masked_mean(one, True, False)


def _per_reader(cov: np.ndarray, j: int) -> tuple[float, float]:
    """Var(Error) and Cov1 of one reader alone."""
    one = cov[:, j : j + 1, :, j : j + 1]
    return _masked_mean(one, True, True), _masked_mean(one, False, True)


def _random_readers_random_cases(auc, cov, table, orc, mods, alpha) -> Analysis:
    """Analysis 1: OR's F with Hillis' ddf, Error term = MS(T*R) + r max(Cov2 - Cov3, 0)."""
    r = auc.shape[1]
    error = table.ms_tr + r * max(orc.cov2 - orc.cov3, 0.0)
    ddf = _ratio(error**2, table.ms_tr**2 / table.df_tr)
    f = _ratio(table.ms_t, error)
    test = GlobalTest("F", f, table.df_t, ddf, float(stats.f.sf(f, table.df_t, ddf)), error)
    diffs = _differences(auc, math.sqrt(2 / r * error), ddf, mods, alpha)
    means = auc.mean(axis=1)
    singles = []
    for i, m in enumerate(mods):
        ms_r = table.ms_r_single[m]
        _, cov2 = _per_modality(cov, i)
        term = ms_r + r * max(cov2, 0.0)
        df = _ratio(term**2, ms_r**2 / (r - 1))
        singles.append(_single(m, float(means[i]), math.sqrt(term / r), df, alpha, ms_r, cov2))
    return Analysis("random readers, random cases", test, diffs, tuple(singles))


def _fixed_readers_random_cases(auc, cov, table, orc, mods, readers, alpha) -> Analysis:
    """Analysis 2: X2 = (t-1) MS(T) / [Var - Cov1 + (r-1) max(Cov2 - Cov3, 0)]."""
    r = auc.shape[1]
    error = orc.var_error - orc.cov1 + (r - 1) * max(orc.cov2 - orc.cov3, 0.0)
    x2 = _ratio(table.df_t * table.ms_t, error)
    test = GlobalTest("X2", x2, table.df_t, None, float(stats.chi2.sf(x2, table.df_t)), error)
    diffs = _differences(auc, math.sqrt(2 / r * error), None, mods, alpha)
    means = auc.mean(axis=1)
    singles = []
    for i, m in enumerate(mods):
        var, cov2 = _per_modality(cov, i)
        se_i = math.sqrt((var + (r - 1) * max(cov2, 0.0)) / r)
        singles.append(
            _single(m, float(means[i]), se_i, None, alpha, table.ms_r_single[m], cov2, var)
        )
    by_reader = []
    for j, reader in enumerate(readers):
        var, cov1 = _per_reader(cov, j)
        se_j = math.sqrt(max(2 * (var - cov1), 0.0))
        for a, b in _pairs(mods):
            d = float(auc[a, j] - auc[b, j])
            extra = {"reader": reader, "var_error": var, "cov1": cov1}
            by_reader.append(_t_difference(a, b, mods, d, se_j, None, alpha, **extra))
    return Analysis("fixed readers, random cases", test, diffs, tuple(singles), tuple(by_reader))


def _random_readers_fixed_cases(auc, table, mods, alpha) -> Analysis:
    """Analysis 3: the modality x reader ANOVA alone (Cov1 = Cov2 = Cov3 = 0)."""
    r = auc.shape[1]
    f = _ratio(table.ms_t, table.ms_tr)
    p = float(stats.f.sf(f, table.df_t, table.df_tr))
    test = GlobalTest("F", f, table.df_t, float(table.df_tr), p, table.ms_tr)
    diffs = _differences(auc, math.sqrt(2 / r * table.ms_tr), float(table.df_tr), mods, alpha)
    means = auc.mean(axis=1)
    singles = []
    for i, m in enumerate(mods):
        ms_r = table.ms_r_single[m]
        singles.append(_single(m, float(means[i]), math.sqrt(ms_r / r), float(r - 1), alpha, ms_r))
    return Analysis("random readers, fixed cases", test, diffs, tuple(singles))


def analyse(
    rows: Iterable[Mapping] | str | os.PathLike,
    covariance: str = "jackknife",
    modalities: Sequence | None = None,
    alpha: float = 0.05,
) -> MrmcResult:
    """The Obuchowski-Rockette MRMC analysis of a reading study (docs/DESIGN.md §14).

    ``rows``: dicts or a CSV / iMRMC path; ``covariance``: ``"jackknife"`` (default, as the Iowa
    program) or ``"delong"``; ``modalities``: their order (differences are first minus second).
    """
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    study = build_study(rows, modalities)
    auc = reader_aucs(study)
    cov = jackknife_covariance(study) if covariance == "jackknife" else delong_covariance(study)
    mods, readers = study.modalities, study.readers
    table = anova(auc, mods)
    orc = or_components(cov, table)
    return MrmcResult(
        covariance=covariance,
        alpha=alpha,
        readers=readers,
        modalities=mods,
        n_cases=len(study.cases),
        n_normal=study.n_normal,
        n_abnormal=study.n_abnormal,
        auc={m: {r: float(auc[i, j]) for j, r in enumerate(readers)} for i, m in enumerate(mods)},
        modality_auc={m: float(v) for m, v in zip(mods, auc.mean(axis=1), strict=True)},
        anova=table,
        or_components=orc,
        dbm_components=dbm_components(orc, len(study.cases)),
        random_readers_random_cases=_random_readers_random_cases(auc, cov, table, orc, mods, alpha),
        fixed_readers_random_cases=_fixed_readers_random_cases(
            auc, cov, table, orc, mods, readers, alpha
        ),
        random_readers_fixed_cases=_random_readers_fixed_cases(auc, table, mods, alpha),
    )


# --------------------------------------------------------------------------- iMRMC text layout


def _is_imrmc(path: Path) -> bool:
    if path.suffix.lower() == ".imrmc":
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        head = [next(f, "") for _ in range(50)]
    return any(line.strip() == IMRMC_BEGIN for line in head)


def _score_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_imrmc(path: str | os.PathLike, rows: Iterable[Mapping] | str | os.PathLike) -> Path:
    """The study in the iMRMC text layout (header, ``BEGIN DATA:``, truth rows, score rows).

    Why: the FDA's iMRMC (and RJafroc) read this file, so a study can be re-analysed there.
    Truth rows are ``-1,case,0,truth``; score rows ``reader,case,modality,score``.
    """
    study = build_study(rows)
    if set(IMRMC_TRUTH_READERS) & set(study.readers):
        raise ValueError(f"readers {IMRMC_TRUTH_READERS} mark iMRMC's truth rows; rename them")
    lines = [
        "NoduleMalignancy reading study, iMRMC input layout",
        f"N0: {study.n_normal}",
        f"N1: {study.n_abnormal}",
        f"NR: {len(study.readers)}",
        f"NM: {len(study.modalities)}",
        "",
        IMRMC_BEGIN,
    ]
    lines += [
        f"{IMRMC_TRUTH_READER},{c},0,{t}" for c, t in zip(study.cases, study.truth, strict=True)
    ]
    for i, m in enumerate(study.modalities):
        for j, r in enumerate(study.readers):
            lines += [
                f"{r},{c},{m},{_score_text(s)}"
                for c, s in zip(study.cases, study.scores[i, j], strict=True)
            ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def _header_counts(header: list[str]) -> dict[str, int]:
    counts = {}
    for line in header:
        key, _, value = line.partition(":")
        if key.strip() in ("N0", "N1", "NR", "NM") and value.strip().isdigit():
            counts[key.strip()] = int(value)
    return counts


def read_imrmc(path: str | os.PathLike) -> list[dict]:
    """Long-format rows (``reader,case,modality,score,truth``) from an iMRMC file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    stripped = [line.strip() for line in lines]
    if IMRMC_BEGIN not in stripped:
        raise ValueError(f"{path}: no '{IMRMC_BEGIN}' line; not an iMRMC file")
    start = stripped.index(IMRMC_BEGIN)
    truth, scored = {}, []
    for number, line in enumerate(stripped[start + 1 :], start=start + 2):
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise ValueError(f"{path}:{number}: expected 4 comma-separated fields, got {line!r}")
        if parts[0] in IMRMC_TRUTH_READERS:
            truth[parts[1]] = _truth(parts[3], number)
        else:
            scored.append((number, parts))
    rows = []
    for number, parts in scored:
        row = dict(zip(("reader", "case", "modality", "score"), parts, strict=True))
        if row["case"] not in truth:
            raise ValueError(f"{path}:{number}: case {row['case']} has no truth row")
        rows.append(_normalise({**row, "truth": truth[row["case"]]}, number))
    _check_header(path, _header_counts(stripped[:start]), rows)
    return rows


def _check_header(path, counts: dict[str, int], rows: list[dict]) -> None:
    truth = _case_truth(rows)
    found = {
        "N0": sum(1 for t in truth.values() if t == 0),
        "N1": sum(1 for t in truth.values() if t == 1),
        "NR": len({r["reader"] for r in rows}),
        "NM": len({r["modality"] for r in rows}),
    }
    for key, value in counts.items():
        if found[key] != value:
            raise ValueError(f"{path}: header says {key}: {value}, the data hold {found[key]}")


# --------------------------------------------------------------------------- figures and tables


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
        ax.set(title=f"reader {reader}", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity")
        ax.legend(loc="lower right", fontsize=7, title="modality (AUC)", title_fontsize=7)
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
        lead = f"| {d.reader} " if by_reader else ""
        lines.append(
            f"{lead}| {d.comparison} | {d.difference:.5f} | {d.std_err:.5f} | "
            f"{'z' if d.df is None else _fmt(d.df, 2)} | {d.statistic:.2f} | {d.p_value:.4f} | "
            f"({d.ci_lower:.5f}, {d.ci_upper:.5f}) |"
        )
    return lines


def _single_table(singles: Sequence[SingleModality], level: int) -> list[str]:
    lines = [f"| modality | AUC | std err | df | {level}% CI |", "|---|---|---|---|---|"]
    for s in singles:
        lines.append(
            f"| {s.modality} | {s.auc:.8f} | {s.std_err:.8f} | "
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
        "| reader | " + " | ".join(mods) + " |",
        "|---" * (len(mods) + 1) + "|",
        *(
            f"| {r} | " + " | ".join(f"{result.auc[m][r]:.8f}" for m in mods) + " |"
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
