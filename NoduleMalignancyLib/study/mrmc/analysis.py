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

The input rows and the score cube are ``data.py``'s; the iMRMC layout ``imrmc.py``'s; the plot and
the Markdown report ``report.py``'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

from ...core.atomic import finite_json
from .data import Study, build_study

COVARIANCES = ("jackknife", "delong")


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
        return finite_json(dataclasses.asdict(self))

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


def analyze(
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
