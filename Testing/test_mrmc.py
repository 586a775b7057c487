"""The MRMC analysis (docs/DESIGN.md §14) against the Iowa OR-DBM MRMC 2.51 output on Van Dyke.

Every printed figure is checked to the precision it is printed with: the computed value must
round to the printed text. Each expected figure is also looked up in the reference file, so a
typo here cannot pass. The data come from ``$NODULE_MALIGNANCY_DATA/mrmc`` (never committed).
"""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from NoduleMalignancyLib.study import mrmc

REFERENCE = "reference_ORDBM_jackknife.txt"


@pytest.fixture(scope="module")
def mrmc_dir(data_dir) -> Path:
    """``<data>/mrmc`` with the Van Dyke scores and the reference output; fails when missing."""
    folder = data_dir / "mrmc"
    for name in ("vandyke.csv", REFERENCE):
        if not (folder / name).exists():
            pytest.fail(f"{folder / name} is missing (see {data_dir}/mrmc/README.md)")
    return folder


@pytest.fixture(scope="module")
def vandyke(mrmc_dir) -> Path:
    return mrmc_dir / "vandyke.csv"


@pytest.fixture(scope="module")
def reference(mrmc_dir) -> str:
    return (mrmc_dir / REFERENCE).read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def result(vandyke) -> mrmc.MrmcResult:
    return mrmc.analyze(vandyke)


@pytest.fixture
def printed(reference):
    """``printed(value, "0.0517")``: value rounds to the text, and the text is in the reference."""

    def check(value: float, text: str) -> None:
        assert text.lstrip("-") in reference, f"{text} is not in the reference output"
        exponent = Decimal(text).as_tuple().exponent
        tolerance = 0.5 * 10.0**exponent + 1e-12
        assert abs(value - float(text)) <= tolerance, f"{value!r} does not print as {text}"

    return check


# --------------------------------------------------------------------------- the reference table


READER_AUC = {
    "1": ("0.91964573", "0.85877617", "0.90386473", "0.97310789", "0.82979066"),
    "2": ("0.94782609", "0.90531401", "0.92173913", "0.99935588", "0.92995169"),
}


def test_reader_aucs(result, printed):
    assert result.modalities == ("1", "2") and result.readers == ("1", "2", "3", "4", "5")
    assert (result.n_cases, result.n_normal, result.n_abnormal) == (114, 69, 45)
    for modality, texts in READER_AUC.items():
        for reader, text in zip(result.readers, texts, strict=True):
            value = result.auc[modality][reader]
            assert abs(value - float(text)) < 1e-7
            printed(value, text)


def test_reader_averaged_aucs_and_difference(result, printed):
    printed(result.modality_auc["1"], "0.89703704")
    printed(result.modality_auc["2"], "0.94083736")
    (diff,) = result.random_readers_random_cases.differences
    assert diff.comparison == "1 - 2"
    printed(diff.difference, "-0.04380032")


def test_anova_of_aucs(result, printed):
    a = result.anova
    printed(a.ss_t, "0.00479617")
    printed(a.ss_r, "0.01534480")
    printed(a.ss_tr, "0.00220412")
    assert (a.df_t, a.df_r, a.df_tr) == (1, 4, 4)
    printed(a.ms_t, "0.00479617")
    printed(a.ms_r, "0.00383620")
    printed(a.ms_tr, "0.00055103")
    printed(a.ms_r_single["1"], "0.00308263")
    printed(a.ms_r_single["2"], "0.00130460")


def test_or_variance_components(result, printed):
    c = result.or_components
    printed(c.var_r, "0.00153500")
    printed(c.var_tr, "0.00020040")
    printed(c.cov1, "0.00034661")
    printed(c.cov2, "0.00034407")
    printed(c.cov3, "0.00023903")
    printed(c.var_error, "0.00080229")
    printed(c.corr1, "0.43203138")
    printed(c.corr2, "0.42886683")
    printed(c.corr3, "0.29793328")


def test_dbm_components(result, printed):
    d = result.dbm_components
    printed(d.var_r, "0.00153500")
    printed(d.var_c, "0.02724923")
    printed(d.var_tr, "0.00020040")
    printed(d.var_tc, "0.01197530")
    printed(d.var_rc, "0.01226473")
    printed(d.var_trc_error, "0.03997160")


def test_analysis_1_random_readers_random_cases(result, printed):
    a = result.random_readers_random_cases
    assert a.test.kind == "F" and a.test.ndf == 1
    printed(a.test.statistic, "4.46")
    printed(a.test.ddf, "15.26")
    printed(a.test.p_value, "0.0517")
    printed(a.test.error_term, "0.00107626")
    (d,) = a.differences
    printed(d.difference, "-0.04380")
    printed(d.std_err, "0.02075")
    printed(d.df, "15.26")
    printed(d.statistic, "-2.11")
    printed(d.p_value, "0.0517")
    printed(d.ci_lower, "-0.08796")
    printed(d.ci_upper, "0.00036")


def test_analysis_1_single_modality(result, printed):
    one, two = result.random_readers_random_cases.single_modality
    printed(one.auc, "0.89703704")
    printed(one.std_err, "0.03317360")
    printed(one.df, "12.74")
    printed(one.ci_lower, "0.82522360")
    printed(one.ci_upper, "0.96885048")
    printed(one.cov2, "0.00048396")
    printed(two.auc, "0.94083736")
    printed(two.std_err, "0.02156637")
    printed(two.df, "12.71")
    printed(two.ci_lower, "0.89413783")
    printed(two.ci_upper, "0.98753689")
    printed(two.cov2, "0.00020419")


def test_analysis_2_fixed_readers_random_cases(result, printed):
    a = result.fixed_readers_random_cases
    assert a.test.kind == "X2" and a.test.ndf == 1 and a.test.ddf is None
    printed(a.test.statistic, "5.47595")
    printed(a.test.p_value, "0.0193")
    (d,) = a.differences
    assert d.df is None
    printed(d.difference, "-0.04380")
    printed(d.std_err, "0.01872")
    printed(d.statistic, "-2.34")
    printed(d.p_value, "0.0193")
    printed(d.ci_lower, "-0.08049")
    printed(d.ci_upper, "-0.00711")
    expected = {
        "1": ("0.02428971", "0.84943008", "0.94464399", "0.00101410", "0.00048396"),
        "2": ("0.01677632", "0.90795637", "0.97371835", "0.00059047", "0.00020419"),
    }
    for s in a.single_modality:
        se, lo, hi, var, cov2 = expected[s.modality]
        assert s.df is None
        for value, text in zip(
            (s.std_err, s.ci_lower, s.ci_upper, s.var_error, s.cov2),
            (se, lo, hi, var, cov2),
            strict=True,
        ):
            printed(value, text)


SINGLE_READER = {  # difference, StdErr, z, p, CI, Var(Error), Cov1
    "1": ("-0.02818", "0.02551", "-1.10", "0.2693", "-0.07818", "0.02182", "0.00069890", "0.00037347"),
    "2": ("-0.04654", "0.02630", "-1.77", "0.0768", "-0.09809", "0.00501", "0.00110605", "0.00076016"),
    "3": ("-0.01787", "0.03121", "-0.57", "0.5668", "-0.07904", "0.04330", "0.00084234", "0.00035532"),
    "4": ("-0.02625", "0.01729", "-1.52", "0.1290", "-0.06014", "0.00764", "0.00015058", "0.00000108"),
    "5": ("-0.10016", "0.04406", "-2.27", "0.0230", "-0.18651", "-0.01381", "0.00121357", "0.00024304"),
}  # fmt: skip


def test_analysis_2_single_readers(result, printed):
    rows = result.fixed_readers_random_cases.single_reader
    assert [d.reader for d in rows] == list(SINGLE_READER)
    for d in rows:
        values = (
            d.difference,
            d.std_err,
            d.statistic,
            d.p_value,
            d.ci_lower,
            d.ci_upper,
            d.var_error,
            d.cov1,
        )
        for value, text in zip(values, SINGLE_READER[d.reader], strict=True):
            printed(value, text)


def test_analysis_3_random_readers_fixed_cases(result, printed):
    a = result.random_readers_fixed_cases
    assert a.test.kind == "F" and a.test.ndf == 1 and a.test.ddf == 4
    printed(a.test.statistic, "8.70")
    printed(a.test.p_value, "0.0420")
    printed(a.test.error_term, "0.00055103")
    (d,) = a.differences
    assert d.df == 4
    printed(d.std_err, "0.01485")
    printed(d.statistic, "-2.95")
    printed(d.p_value, "0.0420")
    printed(d.ci_lower, "-0.08502")
    printed(d.ci_upper, "-0.00258")
    one, two = a.single_modality
    assert one.df == two.df == 4
    for s, texts in (
        (one, ("0.00308263", "0.02482994", "0.82809808", "0.96597599")),
        (two, ("0.00130460", "0.01615303", "0.89598936", "0.98568536")),
    ):
        for value, text in zip((s.ms_r, s.std_err, s.ci_lower, s.ci_upper), texts, strict=True):
            printed(value, text)


# --------------------------------------------------------------------------- checks that bite


def _synthetic(
    n_readers=6, n_normal=60, n_abnormal=40, shifts=(1.0, 2.5), seed=0, key="score"
) -> list[dict]:
    """A binormal study: case and reader effects shared across modalities, one shift each."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.zeros(n_normal, int), np.ones(n_abnormal, int)]
    case_effect = rng.normal(0, 0.7, truth.size)
    rows = []
    for m, shift in enumerate(shifts, start=1):
        for r in range(n_readers):
            skill = rng.normal(0, 0.3)
            score = truth * (shift + skill) + case_effect + rng.normal(0, 1, truth.size)
            rows += [
                {"reader": f"R{r}", "case": f"c{k}", "modality": f"m{m}", key: s, "truth": t}
                for k, (s, t) in enumerate(zip(score, truth, strict=True))
            ]
    return rows


def test_swapping_modalities_flips_the_difference_and_keeps_the_test(vandyke, result):
    swapped = mrmc.analyze(vandyke, modalities=["2", "1"])
    a, b = result.random_readers_random_cases, swapped.random_readers_random_cases
    assert b.differences[0].comparison == "2 - 1"
    assert b.differences[0].difference == pytest.approx(-a.differences[0].difference, abs=1e-15)
    assert (b.differences[0].ci_lower, b.differences[0].ci_upper) == pytest.approx(
        (-a.differences[0].ci_upper, -a.differences[0].ci_lower), abs=1e-12
    )
    for field in ("statistic", "ddf", "p_value"):
        assert getattr(b.test, field) == pytest.approx(getattr(a.test, field), rel=1e-12)
    relabelled = [
        {**row, "modality": {"1": "2", "2": "1"}[row["modality"]]}
        for row in mrmc.load_rows(vandyke)
    ]
    c = mrmc.analyze(relabelled, modalities=["1", "2"]).random_readers_random_cases
    assert c.differences[0].difference == pytest.approx(-a.differences[0].difference, abs=1e-15)
    assert c.test.statistic == pytest.approx(a.test.statistic, rel=1e-12)


def test_a_much_better_modality_is_significant():
    res = mrmc.analyze(_synthetic(shifts=(0.8, 2.5)))
    a = res.random_readers_random_cases
    assert a.test.p_value < 0.01
    assert a.differences[0].difference < 0 and a.differences[0].ci_upper < 0
    assert res.fixed_readers_random_cases.test.p_value < 0.01


def test_equal_modalities_are_not_significant():
    a = mrmc.analyze(_synthetic(shifts=(1.5, 1.5), seed=3)).random_readers_random_cases
    assert a.test.p_value > 0.05
    assert a.differences[0].ci_lower < 0 < a.differences[0].ci_upper


def test_three_modalities_give_pairwise_differences():
    res = mrmc.analyze(_synthetic(shifts=(0.5, 1.5, 2.5), key="rating"))
    a = res.random_readers_random_cases
    assert a.test.ndf == 2
    assert [d.comparison for d in a.differences] == ["m1 - m2", "m1 - m3", "m2 - m3"]
    means = res.modality_auc
    for d in a.differences:
        assert d.difference == pytest.approx(means[d.modality_a] - means[d.modality_b])
    assert len(res.fixed_readers_random_cases.single_reader) == 6 * 3


def test_vectorised_auc_equals_the_pairwise_count():
    rows = _synthetic(n_readers=3, n_normal=9, n_abnormal=7, seed=5)
    for row in rows:
        row["score"] = round(row["score"])  # many ties
    study = mrmc.build_study(rows)
    auc = mrmc.reader_aucs(study)
    for i in range(2):
        for j in range(3):
            x1 = study.scores[i, j, study.truth == 1]
            x0 = study.scores[i, j, study.truth == 0]
            wins = sum((a > b) + 0.5 * (a == b) for a in x1 for b in x0)
            assert auc[i, j] == pytest.approx(wins / (x1.size * x0.size), abs=1e-15)


def test_jackknife_covariance_equals_explicit_leave_one_out():
    rows = _synthetic(n_readers=3, n_normal=8, n_abnormal=6, seed=7)
    study = mrmc.build_study(rows)
    c = len(study.cases)
    left_out = np.stack(
        [
            mrmc.reader_aucs(
                mrmc.Study(
                    study.readers,
                    study.modalities,
                    study.cases[:k] + study.cases[k + 1 :],
                    np.delete(study.truth, k),
                    np.delete(study.scores, k, axis=-1),
                )
            ).ravel()
            for k in range(c)
        ]
    )
    dev = left_out - left_out.mean(axis=0)
    expected = (c - 1) / c * dev.T @ dev
    np.testing.assert_allclose(mrmc.jackknife_covariance(study).reshape(6, 6), expected, atol=1e-15)


def test_delong_and_jackknife_agree_on_van_dyke(vandyke, result):
    delong = mrmc.analyze(vandyke, covariance="delong")
    assert delong.covariance == "delong" and delong.auc == result.auc
    for name in ("var_error", "cov1", "cov2", "cov3"):
        jack, dl = getattr(result.or_components, name), getattr(delong.or_components, name)
        assert dl == pytest.approx(jack, rel=0.10), name
        assert dl < jack  # the jackknife's n / (n - 1) factors make it the larger
    a, b = result.random_readers_random_cases, delong.random_readers_random_cases
    assert b.differences[0].std_err == pytest.approx(a.differences[0].std_err, rel=0.10)
    assert b.test.p_value == pytest.approx(a.test.p_value, abs=0.01)


# --------------------------------------------------------------------------- bad input


def _rows(vandyke) -> list[dict]:
    return mrmc.load_rows(vandyke)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[1:], "has no score for case"),
        (lambda rows: [{**r, "truth": 1} for r in rows], "one class"),
        (lambda rows: [r for r in rows if r["reader"] == "1"], "at least 2 readers"),
        (lambda rows: [r for r in rows if r["modality"] == "1"], "at least 2 modalities"),
        (lambda rows: [{**rows[0], "truth": 1 - rows[0]["truth"]}, *rows[1:]], "not constant"),
        (lambda rows: [*rows, rows[0]], "twice"),
        (lambda rows: [{**rows[0], "score": "high"}, *rows[1:]], "finite number"),
        (lambda rows: [{**rows[0], "truth": 2}, *rows[1:]], "0 \\(normal\\) or 1"),
        (lambda rows: [{k: v for k, v in r.items() if k != "case"} for r in rows], "no case"),
        (lambda rows: [], "no rows"),
    ],
)
def test_bad_input_is_refused(vandyke, edit, message):
    with pytest.raises(ValueError, match=message):
        mrmc.analyze(edit(_rows(vandyke)))


def test_bad_options_are_refused(vandyke):
    with pytest.raises(ValueError, match="covariance"):
        mrmc.analyze(vandyke, covariance="bootstrap")
    with pytest.raises(ValueError, match="do not match"):
        mrmc.analyze(vandyke, modalities=["1", "3"])


# --------------------------------------------------------------------------- files and CLI


def test_imrmc_round_trip(vandyke, result, tmp_path):
    path = mrmc.write_imrmc(tmp_path / "vandyke.imrmc", vandyke)
    lines = path.read_text().splitlines()
    begin = lines.index("BEGIN DATA:")
    assert {"N0: 69", "N1: 45", "NR: 5", "NM: 2"} <= set(lines[:begin])
    assert lines[begin + 1] == "-1,1,0,0"
    assert len(lines) - begin - 1 == 114 + 1140
    truth_rows = lines[begin + 1 : begin + 115]
    assert all(line.startswith("-1,") and line[-2:] in (",0", ",1") for line in truth_rows)
    back = mrmc.read_imrmc(path)

    def key(rows):
        return sorted((r["reader"], r["case"], r["modality"], r["score"], r["truth"]) for r in rows)

    assert key(back) == key(_rows(vandyke))
    assert mrmc.analyze(path).to_dict() == result.to_dict()  # load_rows recognises the layout
    r_style = tmp_path / "r_style.txt"  # the R package marks truth rows with reader "truth"
    r_style.write_text("\n".join(
        "truth" + line[2:] if line.startswith("-1,") else line for line in lines
    ))  # fmt: skip
    assert key(mrmc.read_imrmc(r_style)) == key(back)
    bad = tmp_path / "bad.imrmc"
    bad.write_text(path.read_text().replace("N1: 45", "N1: 44"))
    with pytest.raises(ValueError, match="header says N1: 44"):
        mrmc.read_imrmc(bad)


def test_reader_rocs_png_and_curve_area(vandyke, result, tmp_path):
    path = mrmc.plot_reader_rocs(vandyke, tmp_path / "rocs.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    study = mrmc.build_study(vandyke)
    fpr, tpr = mrmc.empirical_roc(study.truth, study.scores[1, 4])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(result.auc["2"]["5"], abs=1e-12)


def test_cli_writes_every_output(vandyke, tmp_path, capsys):
    from NoduleMalignancyLib import cli

    out = tmp_path / "out"
    assert cli.main(["mrmc", "--scores", str(vandyke), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "F(1, 15.26) = 4.46, p = 0.0517" in line
    assert "1 - 2 = -0.04380 (95% CI -0.08796 to 0.00036)" in line
    for name in ("mrmc.json", "mrmc.md", "scores.imrmc", "reader_rocs.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "mrmc.json").read_text())
    assert data["covariance"] == "jackknife"
    assert round(data["or_components"]["var_r"], 8) == 0.001535
    assert round(data["random_readers_random_cases"]["test"]["ddf"], 2) == 15.26
    assert "| Cov3 | 0.00023903 |" in (out / "mrmc.md").read_text()
    assert (
        cli.main(
            [
                "mrmc",
                "--scores",
                str(out / "scores.imrmc"),
                "--out",
                str(out / "again"),
                "--covariance",
                "delong",
            ]
        )
        == 0
    )
    again = json.loads((out / "again" / "mrmc.json").read_text())
    assert again["covariance"] == "delong" and again["auc"] == data["auc"]


def test_cli_reports_bad_scores(tmp_path, capsys):
    from NoduleMalignancyLib import cli

    path = tmp_path / "scores.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reader", "case", "modality", "score", "truth"])
        writer.writerows([[1, 1, "a", 1, 0], [1, 2, "a", 2, 1]])
    assert cli.main(["mrmc", "--scores", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
