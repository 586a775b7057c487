"""The exam report (issue 31 item 4, docs/DESIGN.md §17): ``exam --out`` writes ``exam_sr.dcm``
(TID 1500) and ``exam_seg.dcm`` beside ``exam.json`` for a DICOM CT, and ``exam.html``.

Run on LIDC-IDRI-0006 (DICOM) against a SYNTHETIC DICOM prior: the same slices with 20 HU noise
under a new study and series, dated a year before (no real follow-up pair here). The SR is
checked like the nodule SR (dciodvfy, read back with highdicom, values equal ``exam.json``),
the page by parsing it: each number's cell keeps its ``exam.json`` value.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from html.parser import HTMLParser

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from test_dicom_outputs import assert_passes_dciodvfy

from NoduleMalignancyLib.files import dicom_outputs, exam_dicom
from NoduleMalignancyLib.files.exam_html import render_exam_html

PRIOR_DATE, DATE = "2024-06-01", "2025-06-01"


def _dicom_prior(archive, folder):
    """The archive's slices with noise, as another study and series of 2024-06-01."""
    extracted = folder / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    rng = np.random.default_rng(0)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    out = folder / "prior"
    out.mkdir()
    for f in sorted(extracted.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        a = ds.pixel_array
        info = np.iinfo(a.dtype)
        noisy = a + rng.normal(0.0, 20.0 / float(ds.RescaleSlope), a.shape)
        ds.PixelData = np.clip(np.rint(noisy), info.min, info.max).astype(a.dtype).tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.StudyDate = ds.SeriesDate = PRIOR_DATE.replace("-", "")
        ds.save_as(out / f.name)
    return out, series


@pytest.fixture(scope="module")
def exam_out(data_dir, tmp_path_factory):
    """(out folder, exam.json, the prior's series UID): 2 nodules of LIDC-IDRI-0006."""
    from NoduleMalignancyLib.cli import main
    from NoduleMalignancyLib.files.samples import nodule_points_lps

    tmp = tmp_path_factory.mktemp("exam_report")
    archive = data_dir / "lidc_ct" / "LIDC-IDRI-0006.tar.gz"
    prior, prior_series = _dicom_prior(archive, tmp)
    points = [p for i, p in enumerate(nodule_points_lps("LIDC-IDRI-0006", data_dir)) if i in (0, 2)]
    document = {"name": "exam", "type": "Multiple points", "version": {"major": 1, "minor": 0},
                "points": [{"name": n, "point": list(p)} for n, p in points]}  # fmt: skip
    (tmp / "points.json").write_text(json.dumps(document))
    out = tmp / "out"
    args = ["exam", "--ct", str(archive), "--points", str(tmp / "points.json"),
            "--prior", str(prior), "--prior-date", PRIOR_DATE, "--date", DATE,
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return out, json.loads((out / "exam.json").read_text()), prior_series


def test_the_exam_files_are_listed_in_exam_json(exam_out):
    out, d, _ = exam_out
    assert d["files"] == {"html": "exam.html", "seg": "exam_seg.dcm", "sr": "exam_sr.dcm"}
    assert all((out / name).is_file() for name in d["files"].values())
    assert "report" in d["timings_s"]["stages"]
    assert [n["prior"]["status"] for n in d["nodules"]] == ["matched", "matched"]


def test_exam_seg_and_sr_pass_the_dicom3tools_validator(exam_out):
    """No error; the warnings the nodule SR has (test_dicom_outputs.py) and no other."""
    out, _, _ = exam_out
    assert_passes_dciodvfy(out / exam_dicom.SEG_FILE, "Segmentation")
    assert_passes_dciodvfy(out / exam_dicom.SR_FILE, "Comprehensive3DSR")


def _value(group, concept):
    found = group.get_measurements(name=concept)
    assert len(found) == 1, concept
    return found[0].value


def _evaluation(group, concept):
    (found,) = group.get_qualitative_evaluations(name=concept)
    return found.value


def test_exam_sr_holds_both_dates_the_change_and_the_categories_of_exam_json(exam_out):
    out, d, prior_series = exam_out
    sr = hd.sr.srread(out / exam_dicom.SR_FILE)
    seg = pydicom.dcmread(out / exam_dicom.SEG_FILE)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [n["name"] for n in d["nodules"]]
    for group, n in zip(groups, d["nodules"], strict=True):
        p = n["prior"]
        pairs = {
            codes.SCT.Volume: n["volume_mm3"],
            codes.SCT.LongAxis: n["diameter_mm"],
            codes.DCM.ProbabilityOfCancer: n["malignancy_probability"],
        }
        pairs |= {concept: p[key] for concept, key, _ in exam_dicom.PRIOR_MEASUREMENTS}
        for concept, expected in pairs.items():
            assert _value(group, concept) == pytest.approx(expected, rel=1e-9), concept.meaning
        # The VDT's interval holds the VDT (core/prior/growth.py) and is in the SR as exam.json has it.
        lo, hi = p["vdt_interval_days"]
        if lo is None or hi is None:  # its ratios hold 1 (stable within the noise): no bounds
            assert not any(group.get_measurements(name=c) for c in exam_dicom.VDT_INTERVAL)
        else:
            assert lo <= p["vdt_days"] <= hi and "ensemble's ratio and the" in p["vdt_note"]
            for concept, expected in zip(exam_dicom.VDT_INTERVAL, (lo, hi), strict=True):
                assert _value(group, concept) == pytest.approx(expected, rel=1e-9), concept.meaning
        units = {m.name.value: m.unit.value for m in group.get_measurements()}
        assert units["VOLCHG"] == "%" and units["VDT"] == "d" and units["PRIORVOL"] == "mm3"
        assert not group.get_measurements(name=exam_dicom.BROCK)  # no clinical inputs given
        category = _evaluation(group, dicom_outputs.LUNG_RADS_FOLLOWUP)
        assert category.value == f"LR-{n['lung_rads']}" and "follow-up screen" in category.meaning
        assert not group.get_qualitative_evaluations(name=dicom_outputs.LUNG_RADS)  # baseline
        assert _evaluation(group, exam_dicom.PRIOR_STATUS).meaning == "matched"
        behavior = _evaluation(group, exam_dicom.LUNG_RADS_BEHAVIOR).meaning
        assert behavior == n["lung_rads_behavior"]
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    (exam_group,) = sr.content.get_image_measurement_groups()
    assert exam_group.tracking_identifier == "exam"
    assert _evaluation(exam_group, exam_dicom.EXAM_LUNG_RADS).value == f"LR-{d['lung_rads']}"
    modifiers = {e.value.value for e in exam_group.get_qualitative_evaluations()} - {
        f"LR-{d['lung_rads']}"
    }
    expected = {f"LRMOD-{s.split()[0]}" for s in d["lung_rads_suggestions"]}
    assert modifiers == expected
    # Both series referenced: the current CT and the SEG as this study's evidence, the prior's
    # instances (another study) as other evidence.
    current = {
        s.SeriesInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    }
    assert current == {d["series_uid"], seg.SeriesInstanceUID}
    (other,) = sr.PertinentOtherEvidenceSequence
    (series,) = other.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == prior_series == d["prior_ct"]["series_uid"]
    assert len(series.ReferencedSOPSequence) == len(list((out.parent / "prior").glob("*.dcm")))


class _Page(HTMLParser):
    """The page's number cells (data-field -> data-value per row), images and text."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.rows.append({})
        elif tag == "td" and "data-value" in a:
            self.rows[-1][a["data-field"]] = float(a["data-value"])
        elif tag == "img":
            self.images.append(a)

    def handle_data(self, data):
        self.text.append(data)


def _png(src: str) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")


def test_exam_html_shows_exam_json_and_a_key_image_per_date(exam_out):
    out, d, _ = exam_out
    page = _Page()
    page.feed((out / "exam.html").read_text(encoding="utf-8"))
    text = " ".join(" ".join(page.text).split())
    assert f"Lung-RADS {d['lung_rads']}" in text
    assert " ".join(d["lung_rads_management"].split()) in text
    rows = [r for r in page.rows if r]
    assert len(rows) == len(d["nodules"])
    for row, n in zip(rows, d["nodules"], strict=True):
        p = n["prior"]
        expected = {k: n[k] for k in ("diameter_mm", "mean_diameter_mm", "volume_mm3")}
        expected |= {f"prior.{k}": p[k] for k in ("diameter_mm", "mean_diameter_mm", "volume_mm3",
                                                   "volume_change_percent", "vdt_days")}  # fmt: skip
        expected["malignancy_probability"] = n["malignancy_probability"]
        assert row == expected
        assert f"{p['volume_change_percent']:+.0f} %" in text and f"{p['vdt_days']:.0f}" in text
        lo, hi = p["vdt_interval_days"]
        if lo is None or hi is None:  # its ratios hold 1: the page says so instead of bounds
            assert f"{p['vdt_days']:.0f} (its ratios hold 1" in text
        else:
            assert f"{p['vdt_days']:.0f} [{lo:.0f}, {hi:.0f}]" in text
    assert "its range over the ensemble's and each fold's paired volume ratio" in text
    # One key image per date and nodule, prior first, each with the outline drawn (yellow).
    alts = [i["alt"] for i in page.images]
    assert alts == [f"{n['name']} {date}" for n in d["nodules"] for date in (PRIOR_DATE, DATE)]
    for image in page.images:
        rgb = _png(image["src"])[..., :3]
        yellow = (rgb[..., 0] > 0.9) & (rgb[..., 1] > 0.7) & (rgb[..., 2] < 0.3)
        assert yellow.sum() > 20


def test_a_refused_or_new_nodule_is_listed_without_numbers():
    """A refused nodule and a new one: their reasons, no invented prior values, no images."""
    base = {"lung_rads": "4A", "lung_rads_descriptor": "Suspicious", "lung_rads_reasons": [],
            "lung_rads_management": "3-month LDCT", "lung_rads_suggestions": [], "date": DATE,
            "prior_ct": {"date": PRIOR_DATE, "compared": True, "findings": [],
                         "not_found_in_current": [{"name": "old", "reason": "no nodule"}]}}  # fmt: skip
    empty = dict.fromkeys(
        ("diameter_mm", "mean_diameter_mm", "volume_mm3", "malignancy_probability")
    )
    refused = {"name": "r", "assessment": "refused", "assessment_reason": "outside the CT",
               "lung_rads": "", "lung_rads_behavior": "", "lung_rads_reasons": [],
               "brock": None, "brock_probability": None, "prior": None, **empty}  # fmt: skip
    new = {**refused, "name": "m", "assessment": "assessed", "lung_rads": "4A",
           "lung_rads_behavior": "new", "lung_rads_reasons": ["new solid 6 to < 8 mm -> 4A"],
           "diameter_mm": 7.0, "mean_diameter_mm": 6.5, "volume_mm3": 150.0,
           "malignancy_probability": 0.2,
           "prior": {"status": "new", "reason": "no nodule at the mapped point"}}  # fmt: skip
    page = _Page()
    page.feed(render_exam_html({**base, "nodules": [refused, new]}, {}))
    text = " ".join(" ".join(page.text).split())
    assert "Refused: outside the CT" in text and "old (on the prior): not found" in text
    assert "new: no nodule at the mapped point" in text and "4A (new)" in text
    assert page.rows[1:] == [{}, {"diameter_mm": 7.0, "mean_diameter_mm": 6.5,
                                  "volume_mm3": 150.0, "malignancy_probability": 0.2}]  # fmt: skip
    assert page.images == []


def test_the_page_withholds_a_not_assessed_malignancy_and_shows_the_similar_line():
    """A not-assessed nodule (probably not a nodule) shows no malignancy on the page, as on
    every surface that leads with it; an assessed one its similar LIDC nodules' line."""
    base = {"lung_rads": "2", "lung_rads_descriptor": "Benign", "lung_rads_reasons": [],
            "lung_rads_management": "12-month LDCT", "lung_rads_suggestions": [], "date": DATE,
            "prior_ct": None}  # fmt: skip
    nodule = {"name": "n", "assessment": "assessed", "assessment_reason": "", "lung_rads": "2",
              "lung_rads_behavior": "", "lung_rads_reasons": [], "brock": None,
              "brock_probability": None, "prior": None, "diameter_mm": 5.0,
              "mean_diameter_mm": 4.5, "volume_mm3": 50.0, "malignancy_probability": 0.03,
              "similar_nodules_summary": "6 similar LIDC nodules: 1 rated suspicious"}  # fmt: skip
    vessel = {**nodule, "name": "v", "assessment": "not_assessed",
              "assessment_reason": "The outline looks like a piece of a vessel",
              "malignancy_probability": 0.4}  # fmt: skip
    page = _Page()
    page.feed(render_exam_html({**base, "nodules": [nodule, vessel]}, {}))
    text = " ".join(" ".join(page.text).split())
    assert page.rows[1]["malignancy_probability"] == 0.03
    assert "malignancy_probability" not in page.rows[2] and "40.0 %" not in text
    assert text.count("6 similar LIDC nodules: 1 rated suspicious") == 1


def test_the_prior_line_says_whose_volume_is_which():
    """The nodule list's and exam line's comparison: the prior's volume, the volume it is
    compared with now (the entry's own: prior x ratio, which may be the overlapping windows'
    and not the panel's volume), the change; mm³, not mm3."""
    from NoduleMalignancyLib.files.exam_html import prior_text

    entry = {"status": "matched", "volume_mm3": 8583.0, "volume_ratio": 0.9693,
             "volume_change_percent": -3.07, "vdt_days": None}  # fmt: skip
    assert prior_text(entry) == "prior 8583 mm³ → now 8320 mm³ (-3 %)"
    assert prior_text({"status": "new", "reason": "no nodule"}) == "prior: new (no nodule)"
    assert prior_text({"status": "matched", "volume_mm3": None}) == "prior: matched"
