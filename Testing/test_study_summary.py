"""The analysis of a reading study: exports, per-reader summary, MRMC (docs/DESIGN.md §14).

Why these tests: the summary is what the study reports. A simulated study (five readers, 30
cases with truth and 2 without; aided ratings pulled toward a good model) goes through the
real store and the real command, and every figure is recomputed here independently: AUROC by
counting pairs, kappa by its pairwise form, the MRMC by ``mrmc.analyze`` on the exported table.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from NoduleMalignancyLib.cli import main
from NoduleMalignancyLib.study import mrmc
from NoduleMalignancyLib.study.design import StudyFileError, load_study
from NoduleMalignancyLib.study.ratings import SCALES
from NoduleMalignancyLib.study.store import StudyStore, create_study
from NoduleMalignancyLib.study.store import study_store as store_module
from NoduleMalignancyLib.study.store.schema import connect
from NoduleMalignancyLib.study.summary import analyze_study

N_TRUTH, N_UNKNOWN = 30, 2
COMPLETE = ("R1", "R2", "R3", "R4")
HALF = "R5"  # stops after 15 cases and the unaided rating of a 16th
BASE = {name: low for name, (low, _) in SCALES.items()}
OUTPUTS = (
    "ratings.csv",
    "scores.csv",
    "scores.imrmc",
    "mrmc.json",
    "mrmc.md",
    "summary.json",
    "summary.md",
    "reader_rocs.png",
)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def simulate(seed: int = 20240601) -> dict:
    """Truth, a good model, LIDC means and each reader's ratings and reading times."""
    rng = np.random.default_rng(seed)
    n = N_TRUTH + N_UNKNOWN
    truth = np.r_[np.repeat([1, 0], N_TRUTH // 2), rng.integers(0, 2, N_UNKNOWN)]
    rng.shuffle(truth[:N_TRUTH])
    sign = 2 * truth - 1
    model = np.round(np.clip(3 + 1.0 * sign + rng.normal(0, 0.8, n), 1, 5), 3)
    reference = np.round(np.clip(3 + 1.0 * sign + rng.normal(0, 0.6, n), 1, 5), 2)
    readers = {}
    for name in (*COMPLETE, HALF):
        unaided = np.clip(np.rint(3 + 0.5 * sign + rng.normal(0, 1.1, n)), 1, 5).astype(int)
        aided = np.clip(np.rint(unaided + 0.6 * (model - unaided)), 1, 5).astype(int)
        readers[name] = {
            "unaided": unaided,
            "aided": aided,
            "confidence": {
                m: np.clip(20.0 * r - 10 + rng.normal(0, 8, n), 0, 100).round(1)
                for m, r in (("unaided", unaided), ("aided", aided))
            },
            "time": {
                "unaided": rng.uniform(30, 120, n).round(1),
                "aided": rng.uniform(10, 60, n).round(1),
            },
        }
    return {"truth": truth, "model": model, "reference": reference, "readers": readers}


def study_file(folder: Path, sim: dict | None, name: str = "pilot", n: int | None = None) -> Path:
    """A sequential study; with ``sim`` its truth, model outputs and LIDC means."""
    n = N_TRUTH + N_UNKNOWN if n is None else n
    cases = []
    for i in range(n):
        case = {"id": f"case{i:02d}", "ct": f"ct/{i:02d}.nrrd"}
        if sim is not None:
            case["truth"] = int(sim["truth"][i]) if i < N_TRUTH else None
            case["reference"] = {"malignancy_mean": float(sim["reference"][i]), "n_readers": 4}
            case["model"] = {
                "malignancy_probability": round(float(sim["model"][i]) / 5, 4),
                "malignancy_score": float(sim["model"][i]),
            }
        else:
            case["truth"] = i % 2
        cases.append(case)
    path = folder / "study.json"
    path.write_text(json.dumps({"name": name, "design": "sequential", "seed": 7, "cases": cases}))
    return path


def read_all(store: StudyStore, clock: Clock, token: str, reader: dict, stop_after: int | None):
    """Every step the store hands out, until done or ``stop_after`` submits."""
    submits = 0
    while (step := store.next_case(token)) is not None and submits != stop_after:
        i = int(step.case.removeprefix("case"))
        store.open_case(token, step.case)
        clock.t += float(reader["time"][step.modality][i])
        malignancy = int(reader[step.modality][i])
        rating = BASE | {
            "malignancy": malignancy,
            "confidence": float(reader["confidence"][step.modality][i]),
        }
        store.submit(token, step.case, step.modality, rating)
        submits += 1


def _connect_without_fsync(db_path):
    con = connect(db_path)
    con.execute("PRAGMA synchronous=OFF")
    return con


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The simulated study read through the store and analyzed by ``study analyze``.

    The ~650 transactions run without fsync: durability is test_study_store's subject, and
    here the fsyncs would only cost half a minute on a slow disk.
    """
    folder = tmp_path_factory.mktemp("study")
    sim = simulate()
    db = folder / "study.sqlite"
    owner = create_study(db, study_file(folder, sim))
    clock = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "connect", _connect_without_fsync)
        store = StudyStore(db, clock=clock)
        for name, reader in sim["readers"].items():
            token = store.add_reader(owner, name)
            read_all(store, clock, token, reader, 31 if name == HALF else None)
    out = folder / "analysis"
    argv = ["study", "analyze", "--db", str(db), "--owner-token", owner, "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    readers = {r["reader"]: r for r in summary["readers"]}
    return {"sim": sim, "db": db, "owner": owner, "out": out, "summary": summary, **readers}


def mann_whitney(truth, score) -> float:
    pos = [s for s, t in zip(score, truth, strict=True) if t == 1]
    neg = [s for s, t in zip(score, truth, strict=True) if t == 0]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def quadratic_kappa(a, b) -> float:
    """Quadratic-weighted kappa in its pairwise form: 1 - mean (a-b)^2 / mean over all pairs."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return 1 - np.mean((a - b) ** 2) / np.mean((a[:, None] - b[None, :]) ** 2)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- outputs and accuracy --------------------------------------------------------------------


def test_analyze_writes_every_output(study):
    out = study["out"]
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "reader_rocs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratings = read_csv(out / "ratings.csv")
    assert len(ratings) == 4 * 2 * 32 + 31 and {"lung_rads", "reading_time_s"} <= set(ratings[0])
    scores = read_csv(out / "scores.csv")
    assert len(scores) == sum(r["truth"] != "" for r in ratings)  # cases with truth only
    s = study["summary"]["study"]
    assert (s["cases"], s["with_truth"], s["malignant"], s["benign"]) == (32, 30, 15, 15)
    assert s["with_model_output"] == s["with_reference"] == 32 and s["readers"] == 5


def test_per_reader_aurocs_equal_mann_whitney_and_aided_is_better(study):
    sim, truth = study["sim"], study["sim"]["truth"][:N_TRUTH]
    differences = []
    for name in COMPLETE:
        reader, auroc = sim["readers"][name], study[name]["auroc"]
        unaided = mann_whitney(truth, reader["unaided"][:N_TRUTH])
        aided = mann_whitney(truth, reader["aided"][:N_TRUTH])
        assert auroc["unaided"] == pytest.approx(unaided, abs=1e-12)
        assert auroc["aided"] == pytest.approx(aided, abs=1e-12)
        assert auroc["difference"] == pytest.approx(aided - unaided, abs=1e-12)
        assert (auroc["n_cases"], auroc["n_malignant"]) == (N_TRUTH, 15)
        differences.append(aided - unaided)
    assert np.mean(differences) > 0.05, "the simulated model helps: aided AUROC is higher"
    mrmc_json = json.loads((study["out"] / "mrmc.json").read_text())
    for name in COMPLETE:  # the summary's AUROC is the MRMC's reader AUC
        for modality in ("unaided", "aided"):
            assert mrmc_json["result"]["auc"][modality][name] == pytest.approx(
                study[name]["auroc"][modality], abs=1e-12
            )


def test_the_half_way_reader_is_scored_on_the_cases_rated_in_both(study):
    sim, half = study["sim"], study[HALF]
    counts = {"study": 32, "with_truth": 30, "unaided": 16, "aided": 15, "paired": 15, "skipped": 0}
    assert half["cases"] == counts
    assert not half["finished"] and not half["in_mrmc"]
    store = StudyStore(study["db"])
    rows = [r for r in store.export_rows(study["owner"]) if r["reader"] == HALF]
    both = {r["case"] for r in rows if r["modality"] == "aided"}
    index = sorted(int(c.removeprefix("case")) for c in both if int(c[4:]) < N_TRUTH)
    truth = sim["truth"][index]
    expected = mann_whitney(truth, sim["readers"][HALF]["aided"][index])
    assert half["auroc"]["aided"] == pytest.approx(expected, abs=1e-12)


# -- change, agreement and time --------------------------------------------------------------


def test_change_toward_the_model_and_agreement_equal_a_direct_count(study):
    sim = study["sim"]
    model, reference = sim["model"], sim["reference"]
    for name in COMPLETE:
        u, a = sim["readers"][name]["unaided"], sim["readers"][name]["aided"]
        r = study[name]
        assert r["change"]["mean_abs_malignancy"] == pytest.approx(np.mean(np.abs(a - u)))
        assert r["change"]["share_changed"] == pytest.approx(np.mean(a != u))
        changed = a != u
        toward = np.abs(a - model) < np.abs(u - model)
        assert r["toward_model"]["n_changed"] == changed.sum()
        assert r["toward_model"]["share_toward"] == pytest.approx(toward[changed].mean())
        for modality, ratings in (("unaided", u), ("aided", a)):
            agree = r["agreement_model"][modality]
            assert agree["n"] == 32
            assert agree["within_1"] == pytest.approx(np.mean(np.abs(ratings - model) <= 1))
            rounded = np.clip(np.floor(model + 0.5), 1, 5)
            assert agree["kappa_quadratic"] == pytest.approx(quadratic_kappa(ratings, rounded))
            lidc = r["agreement_reference"][modality]
            assert lidc["mean_abs_difference"] == pytest.approx(
                np.mean(np.abs(ratings - reference))
            )
        assert r["toward_model"]["share_toward"] > 0.9, "the simulation pulls toward the model"
        assert (
            r["agreement_model"]["aided"]["within_1"] > r["agreement_model"]["unaided"]["within_1"]
        )


def test_reading_times_are_the_simulated_ones(study):
    for name in COMPLETE:
        times = study["sim"]["readers"][name]["time"]
        for modality in ("unaided", "aided"):
            got = study[name]["reading_time_s"][modality]
            q25, median, q75 = np.percentile(times[modality], [25, 50, 75])
            assert got["n"] == 32
            assert (got["median"], got["q25"], got["q75"]) == pytest.approx((median, q25, q75))


# -- the MRMC --------------------------------------------------------------------------------


def test_mrmc_equals_analyze_on_the_exported_scores_of_complete_readers(study):
    out = study["out"]
    rows = [r for r in read_csv(out / "scores.csv") if r["reader"] in COMPLETE]
    assert {r["reader"] for r in read_csv(out / "scores.csv")} == {*COMPLETE, HALF}
    expected = mrmc.analyze(rows, modalities=("aided", "unaided"))
    got = json.loads((out / "mrmc.json").read_text())
    assert got["available"] and got["readers"] == list(COMPLETE)
    assert got["result"] == json.loads(json.dumps(expected.to_dict()))
    a = expected.random_readers_random_cases
    head = got["headline"]
    assert head["comparison"] == "aided - unaided"
    assert (head["F"], head["ddf"], head["p"]) == (a.test.statistic, a.test.ddf, a.test.p_value)
    assert head["ci"] == [a.differences[0].ci_lower, a.differences[0].ci_upper]
    assert head["modality_auc"]["aided"]["ci"] == [
        a.single_modality[0].ci_lower,
        a.single_modality[0].ci_upper,
    ]
    assert head["difference"] > 0
    assert study["summary"]["mrmc"]["headline"] == head
    assert expected.main_line() in (out / "mrmc.md").read_text()


def test_the_imrmc_file_round_trips(study):
    out = study["out"]
    rows = mrmc.load_rows([r for r in read_csv(out / "scores.csv") if r["reader"] in COMPLETE])
    back = mrmc.read_imrmc(out / "scores.imrmc")
    key = lambda r: (r["reader"], r["case"], r["modality"])  # noqa: E731
    assert sorted(back, key=key) == sorted(rows, key=key)
    assert "N0: 15" in (out / "scores.imrmc").read_text()


def test_the_half_way_reader_is_left_out_of_the_mrmc_with_a_note(study):
    summary, out = study["summary"], study["out"]
    reason = study[HALF]["excluded_because"]
    assert reason.startswith("incomplete: 14 unaided and 15 aided ratings")
    assert summary["mrmc"]["excluded"] == [{"reader": HALF, "reason": reason}]
    assert any(n.startswith(f"reader {HALF} is left out of the MRMC") for n in summary["notes"])
    assert all(study[name]["in_mrmc"] for name in COMPLETE)
    assert f"left out: {HALF}: incomplete" in (out / "mrmc.md").read_text()
    assert (
        f"- reader {HALF} is left out of the MRMC: incomplete" in (out / "summary.md").read_text()
    )


def test_summary_md_holds_the_per_reader_table(study):
    text = (study["out"] / "summary.md").read_text()
    assert text.startswith("# Reading study summary: pilot")
    assert "| reader | cases (unaided/aided) | AUROC unaided | AUROC aided | difference |" in text
    for name in COMPLETE:
        a = study[name]["auroc"]
        row = f"| {name} | 32/32 | {a['unaided']:.3f} | {a['aided']:.3f} | {a['difference']:+.3f} |"
        assert row in text
    assert f"| {HALF} | 16/15 |" in text and text.count("| yes |") == 4
    assert "## Agreement with the model" in text and "## Reading time (s)" in text
    assert re.search(r"F\(1, [\d.]+\) = [\d.]+, p = [\d.]+; aided - unaided = \+", text)


# -- refusals and the absent fields -----------------------------------------------------------


def test_the_owner_token_is_required(study, tmp_path, capsys):
    out = tmp_path / "refused"
    argv = ["study", "analyze", "--db", str(study["db"]), "--owner-token", "wrong", "--out"]
    assert main([*argv, str(out)]) == 2
    assert "wrong owner token" in capsys.readouterr().err
    assert not out.exists(), "nothing is written without the owner token"


def test_without_model_or_reference_agreement_is_not_available(tmp_path, capsys):
    """And one complete reader is too few for the MRMC: the summary still comes, with the reason."""
    db = tmp_path / "s.sqlite"
    owner = create_study(db, study_file(tmp_path, None, name="", n=6))
    store = StudyStore(db)
    token = store.add_reader(owner, "Dr A")
    store.add_reader(owner, "Dr B")  # never starts
    while (step := store.next_case(token)) is not None:
        store.open_case(token, step.case)
        malignant = int(step.case[-1]) % 2  # the truth study_file gives this case
        level = 1 + 3 * malignant + (step.modality == "aided")  # always changed when aided
        store.submit(token, step.case, step.modality, BASE | {"malignancy": level, "confidence": 5})
    out = tmp_path / "out"
    out.mkdir()
    (out / "reader_rocs.png").write_bytes(b"stale")
    summary = analyze_study(db, owner, out, score="confidence", covariance="delong")
    a = summary["readers"][0]
    assert a["agreement_model"] is None and a["toward_model"] is None
    assert a["agreement_reference"] is None and a["change"]["share_changed"] == 1.0
    assert summary["readers"][1]["excluded_because"] == "rated no case"
    assert not summary["mrmc"]["available"] and "at least 2 readers" in summary["mrmc"]["reason"]
    assert not (out / "reader_rocs.png").exists() and not (out / "scores.imrmc").exists()
    assert not json.loads((out / "mrmc.json").read_text())["available"]
    text = (out / "summary.md").read_text()
    assert "Not available: the study file gives no model output." in text
    assert "Not available: the study file gives no reference." in text
    assert "Not available: an MRMC analysis needs at least 2 readers" in text


def test_skipped_cases_are_listed_and_their_reader_is_left_out_of_the_mrmc(tmp_path):
    db = tmp_path / "s.sqlite"
    owner = create_study(db, study_file(tmp_path, None, n=4))
    store = StudyStore(db)
    tokens = [store.add_reader(owner, name) for name in ("A", "B", "C")]
    for i, token in enumerate(tokens):
        while (step := store.next_case(token)) is not None:
            if i == 2 and step.case == "case01":
                store.skip(token, step.case, "No CT at ct/01.nrrd.")
                continue
            store.open_case(token, step.case)
            level = 1 + 3 * (int(step.case[-1]) % 2) + (step.modality == "aided")
            store.submit(
                token, step.case, step.modality, BASE | {"malignancy": level, "confidence": 5}
            )
    summary = analyze_study(db, owner, tmp_path / "out")
    c = summary["readers"][2]
    assert c["finished"] and c["cases"]["skipped"] == 1 and not c["in_mrmc"]
    assert "1 of them skipped" in c["excluded_because"]
    assert summary["mrmc"]["readers"] == ["A", "B"]
    assert [(k["reader"], k["case"], k["reason"]) for k in summary["skipped"]] == [
        ("C", "case01", "No CT at ct/01.nrrd.")
    ]
    text = (tmp_path / "out" / "summary.md").read_text()
    assert (
        "## Skipped cases" in text and "| C | case01 | 1 | unaided | No CT at ct/01.nrrd." in text
    )
    assert "left out of the MRMC" in text
    assert read_csv(tmp_path / "out" / "skipped.csv")[0]["case"] == "case01"


@pytest.mark.parametrize(
    "field, value",
    [
        ("reference", {"malignancy_mean": 5.5}),
        ("reference", {"n_readers": 0}),
        ("reference", {"size_mean": 3.0}),
        ("reference", {}),
        ("reference", [3.0]),
        ("model", {"malignancy_probability": 1.5}),
        ("model", {"malignancy_score": "high"}),
        ("model", {"malignancy_score": True}),
        ("model", {"probability": 0.5}),
    ],
)
def test_bad_reference_or_model_fields_are_refused_naming_them(tmp_path, field, value):
    path = study_file(tmp_path, None, n=3)
    data = json.loads(path.read_text())
    data["cases"][1][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(StudyFileError, match=re.escape(f"cases[1].{field}")):
        load_study(path)


def test_reference_and_model_fields_load_and_stay_optional(tmp_path):
    path = study_file(tmp_path, simulate(), n=3)
    data = json.loads(path.read_text())
    data["cases"][0]["reference"] = {"malignancy_mean": 4, "spiculation_mean": 2.5}
    data["cases"][1]["model"] = {"malignancy_probability": 0.25, "malignancy_score": None}
    del data["cases"][2]["model"], data["cases"][2]["reference"]
    path.write_text(json.dumps(data))
    cases = load_study(path).cases
    assert cases[0].reference.malignancy_mean == 4.0 and cases[0].reference.n_readers is None
    assert cases[0].reference.mean("spiculation") == 2.5
    assert cases[1].model.malignancy_probability == 0.25 and cases[1].model.malignancy_score is None
    assert cases[2].model is None and cases[2].reference is None
