"""One result schema (core/result_schema.py): every surface uses its names, labels and units.

A surface that writes a field the schema does not name fails here: the CSV header and cells,
``result.json``'s keys, the MRML table's columns, the station panel's rows, the batch report's
columns, the DICOM SR's private concepts, the report image's title and the CLI print.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.core import result_schema as schema
from NoduleMalignancyLib.core.clinical.lung_rads import round_mm
from NoduleMalignancyLib.core.result_schema import (
    CSV,
    FIELDS,
    GROUP_TITLES,
    JSON,
    PANEL,
    RENAMED,
    REPORT,
    TABLE,
    fields_for,
    shown,
    unknown_names,
)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def result(ct_0001_path, data_dir, tiny_dir):
    """A real analysis (tiny random ensemble: the fields, not the numbers, matter here)."""
    from NoduleMalignancyLib.core.geometry import ImageGeometry
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.nodule.analysis import analyze_point
    from NoduleMalignancyLib.files.samples import nodule_points_lps

    image = sitk.ReadImage(str(ct_0001_path))
    ensemble = Ensemble.load(tiny_dir, device="cpu")
    point = np.array(nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1])
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    return analyze_point(array, geometry, point, ensemble)


def test_every_field_is_described_once_with_a_group_a_kind_and_a_unit_where_it_is_a_number():
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names)), "a field is named twice"
    for f in FIELDS:
        assert f.label and f.meaning and f.group in GROUP_TITLES, f.name
        assert f.kind in ("number", "text", "list", "detail"), f.name
        assert f.surfaces and f.surfaces <= set(schema.SURFACES), f.name
        if f.kind == "number" and f.unit not in ("1", ""):  # a unit, or the rating scale
            assert f.shown_unit or f.unit in f.heading, f.name
        if f.percent:
            assert f.unit == "1" and f.shown_unit == "%", f.name
    assert "warnings" in names and "warning_messages" in names


def test_values_and_result_json_use_schema_names_only(result):
    """A new result value must be named in the schema first: values() and result.json fail
    here otherwise; result.json holds every JSON field the result has."""
    values = result.values()
    assert unknown_names(values) == []
    summary = result.summary()
    assert unknown_names(summary) == []
    # write_analysis adds the files and the input read (files/ct_input.input_identity)
    added = {"files", "series_uid", "patient_id", "study_date"}
    expected = {f.name for f in fields_for(JSON)} - added
    assert set(summary) == expected
    assert summary["warnings"] == [w.code for w in result.warnings]
    assert summary["warning_messages"] == [w.message for w in result.warnings]


def test_the_predict_csv_is_the_schema_s_csv_fields_in_order(result):
    from NoduleMalignancyLib.batch.predict import PREDICT_COLUMNS, result_columns

    assert PREDICT_COLUMNS == tuple(f.name for f in fields_for(CSV))
    cells = result_columns(result)
    assert unknown_names(cells) == [] and set(cells) <= set(PREDICT_COLUMNS)
    missing = {f.name for f in fields_for(CSV) if not f.optional} - set(cells)
    assert missing == {"id", "error"}, "predict_ct fills these two per row"
    assert float(cells["malignancy_probability"]) == pytest.approx(
        result.malignancy_probability, abs=1e-6
    )
    assert cells["warnings"] == ";".join(w.code for w in result.warnings)


def test_the_mrml_table_columns_are_the_schema_s_table_fields(result):
    from NoduleMalignancyLib.files.ct_input import IDENTITY_FIELDS
    from NoduleMalignancyLib.mrml.roles import TABLE_COLUMNS

    table = fields_for(TABLE)
    assert [c[0] for c in TABLE_COLUMNS] == [f.name for f in table]
    for (name, kind, title, unit, decimals), f in zip(TABLE_COLUMNS, table, strict=True):
        assert title == f.heading and unit == f.shown_unit and decimals == f.shown_decimals
        assert kind == ("double" if f.kind == "number" else "string"), name
    point_columns = {"point", "point_id", "r", "a", "s"}
    volume_columns = set(IDENTITY_FIELDS)  # the CT's (mrml/identity.py), not the result's
    assert {f.name for f in table} - point_columns - volume_columns <= set(result.values())
    assert "malignancy_percent" not in {c[0] for c in TABLE_COLUMNS}


def test_the_panel_rows_are_schema_fields_with_the_schema_s_labels_and_units(result):
    from NoduleMalignancyLib.station.panel import result_panel

    panel = result_panel(result.summary(), "N1")
    rows = [r for s in panel["sections"] for r in s["rows"]]
    assert rows and unknown_names(r["key"] for r in rows) == []
    panel_fields = {f.name for f in fields_for(PANEL)}
    assert {r["key"] for r in rows} <= panel_fields
    for row in rows:
        f = schema.field(row["key"])
        assert row["label"] == f.label
        if f.kind == "number" and f.shown_unit:
            assert row["text"].endswith(f" {f.shown_unit}"), row
    keys = [r["key"] for r in rows]
    assert keys.count("calcification_probability") == 1 and keys.count("mean_diameter_mm") == 1
    assert (
        panel["headline"]
        == f"Malignancy {shown('malignancy_probability', result.malignancy_probability)}"
    )
    assert [w["code"] for w in panel["warnings"]] == [w.code for w in result.warnings]


def test_the_lung_rads_reasons_and_the_panel_print_one_mean_diameter(result):
    """One rounding: the Lung-RADS reasons and the schema round sizes alike (half up)."""
    for value in (5.75, 5.85, 5.65, 5.749, 10.25, 7.95, 0.05):
        assert shown("mean_diameter_mm", value) == f"{round_mm(value):.1f} mm", value
    text = shown("mean_diameter_mm", result.mean_diameter_mm)
    assert any(text in reason for reason in result.lung_rads.reasons), (text, result.lung_rads)


def test_the_batch_report_columns_are_schema_fields():
    from NoduleMalignancyLib.files.batch_report import COLUMNS

    names = [name for name, _, _ in COLUMNS if name not in ("row", "thumbnail")]
    assert unknown_names(names) == []
    folded = {"malignancy_sd", "warning_messages", "assessment_reason"}  # in another's cell
    assert set(names) == {f.name for f in fields_for(REPORT)} - folded
    headers = dict((name, header) for name, header, _ in COLUMNS)
    assert headers["volume_mm3"] == "Volume (mm³)" and headers["diameter_mm"].endswith("(mm)")


def test_the_dicom_sr_private_concepts_mean_the_schema_s_labels():
    pytest.importorskip("highdicom")
    from NoduleMalignancyLib.files import dicom_outputs

    assert dicom_outputs.MALIGNANCY_SD.meaning == schema.field("malignancy_sd").label
    assert (
        dicom_outputs.SOLID_COMPONENT_DIAMETER.meaning
        == schema.field("lung_rads_solid_mean_diameter_mm").label
    )
    score = dicom_outputs.attribute_score_code("malignancy")
    assert score.meaning == schema.field("malignancy_score").heading
    units = {f.unit for f in FIELDS if f.name in ("volume_mm3", "diameter_mm", "mean_hu")}
    assert units <= set(dicom_outputs.UCUM_UNITS)


def test_report_image_title_and_cli_print_use_the_schema_s_labels(result, capsys):
    from NoduleMalignancyLib import cli
    from NoduleMalignancyLib.files.report_image import TITLE_FIELDS, title_text

    title = title_text(result, "N1")
    values = result.values()
    for name in TITLE_FIELDS:
        assert schema.labelled(name, values[name]) in title, name
    cli._print_result(result)
    out = capsys.readouterr().out
    assert schema.labelled("malignancy_probability", result.malignancy_probability) in out
    assert schema.labelled("volume_mm3", result.volume_mm3) in out
    assert not re.search(r"\bp=0\.", out), "probabilities are shown as percentages"
    # The similar LIDC nodules' line, as on the panel (the tiny ensemble has no index: two
    # neighbours are put in, one rated suspicious).
    from dataclasses import replace

    from NoduleMalignancyLib.core.model.similar import SimilarNodule

    neighbours = [
        SimilarNodule(f"LIDC-IDRI-090{i}_R_1", f"LIDC-IDRI-090{i}", 0.5, 8.0, rating, {})
        for i, rating in enumerate((4.5, 2.0))
    ]
    cli._print_result(replace(result, similar_nodules=neighbours))
    line = replace(result, similar_nodules=neighbours).values()["similar_nodules_summary"]
    assert line and "1 rated suspicious" in line and line in capsys.readouterr().out


def test_every_renamed_name_is_in_the_readme_changelog():
    text = README.read_text(encoding="utf-8")
    changelog = text[text.index("## Changelog") :]
    for surface, renamed in RENAMED.items():
        for old, new in renamed.items():
            assert f"`{old}`" in changelog and new.split(" ")[0] in changelog, (surface, old)
