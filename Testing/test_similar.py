"""Similar nodules (core/model/similar.py): the embedding, the search, the index file and its binding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_result_schema import result  # noqa: F401 (the fixture: a real analysis)

from NoduleMalignancyLib.core.config import ATTRIBUTES, NetworkConfig
from NoduleMalignancyLib.core.model.network import build_network
from NoduleMalignancyLib.core.model.similar import (
    INDEX_INFO,
    SimilarIndex,
    load_similar_index,
    ratings_from_targets,
    summary_line,
    weights_digest,
)
from NoduleMalignancyLib.evaluation.similar import evaluate_out_of_fold, size_lookup


def test_bag_logits_are_a_linear_read_out_of_the_pooled_features():
    """Why the embedding: bag logit = sum over scales of W_l . pooled_l + b_l x mass share_l."""
    torch.manual_seed(0)
    model = build_network(NetworkConfig(widths=(8, 8, 16, 16), pyramid_channels=16, groups=4))
    model.eval()
    x = torch.randn(2, 3, 16, 16, 16, dtype=torch.float64)
    model = model.double()
    out = model(x, with_seg=False)
    feats = out["bag_features"]
    total = sum(g.sum(dim=(2, 3, 4)) for g in out["gates"])
    start, expected = 0, 0
    for gate, head in zip(out["gates"], model.instance_heads, strict=True):
        conv = head if isinstance(head, torch.nn.Conv3d) else head[-1]
        c = conv.weight.shape[1]
        weight = conv.weight.reshape(len(ATTRIBUTES), c)
        share = gate.sum(dim=(2, 3, 4)) / total
        expected = expected + feats[:, start : start + c] @ weight.T + share * conv.bias
        start += c
    assert start == feats.shape[1]
    torch.testing.assert_close(expected, out["bag_logits"], rtol=1e-9, atol=1e-9)


def _index(rng, m: int = 60, k: int = 3, f: int = 8) -> SimilarIndex:
    features = rng.normal(size=(k, m, f)).astype(np.float32)
    return SimilarIndex(
        features=features,
        patient_id=np.array([f"P{i // 2}" for i in range(m)]),
        nodule=np.array([f"P{i // 2}_R_{i % 2}" for i in range(m)]),
        diameter_mm=rng.uniform(4, 25, m),
        malignancy_mean=rng.uniform(1, 5, m),
        targets=rng.uniform(0, 1, (m, len(ATTRIBUTES))),
        weights_sha256="w",
    )


def test_nearest_finds_the_copy_and_never_the_excluded_patient():
    rng = np.random.default_rng(0)
    index = _index(rng)
    query = index.features[:, 7] + 1e-3
    first = index.nearest(query, k=6)
    assert first[0].nodule == "P3_R_1" and first[0].distance < 0.01
    assert [n.distance for n in first] == sorted(n.distance for n in first)
    other = index.nearest(query, k=6, exclude_patient="P3")
    assert len(other) == 6 and all(n.patient_id != "P3" for n in other)
    with pytest.raises(ValueError, match="do not match the index"):
        index.nearest(query[:, :3])


def test_ratings_and_summary_line():
    r = ratings_from_targets(np.linspace(0, 1, len(ATTRIBUTES)))
    assert r["subtlety"] == 1.0 and r["internal_structure"] == 1.0
    rng = np.random.default_rng(1)
    neighbours = _index(rng).nearest(rng.normal(size=(3, 8)), k=6)
    n = sum(nb.malignancy_mean > 3 for nb in neighbours)
    assert summary_line(neighbours) == f"6 similar LIDC nodules: {n} rated suspicious"
    assert summary_line([]) == ""


def test_index_file_round_trip_and_binding(tmp_path):
    rng = np.random.default_rng(2)
    index = _index(rng)
    index.save(tmp_path)
    loaded = load_similar_index(tmp_path, "w")
    assert loaded is not None
    q = rng.normal(size=(3, 8))
    assert [n.nodule for n in loaded.nearest(q)] == [n.nodule for n in index.nearest(q)]
    # Other weights, or a damaged file: the index is not used.
    assert load_similar_index(tmp_path, "other") is None
    info = json.loads((tmp_path / INDEX_INFO).read_text())
    (tmp_path / info["file"]).write_bytes(b"damaged")
    assert load_similar_index(tmp_path, "w") is None
    assert load_similar_index(tmp_path / "absent", "w") is None
    assert weights_digest([{"sha256": "a"}, {"sha256": "b"}]) != weights_digest(
        [{"sha256": "b"}, {"sha256": "a"}]
    )


def test_out_of_fold_neighbours_beat_a_size_lookup_when_the_embedding_carries_the_label():
    rng = np.random.default_rng(3)
    m = 200
    malignant = rng.random(m) < 0.5
    index = _index(rng, m=m, k=2, f=4)
    index.diameter_mm = rng.uniform(5, 15, m)  # size says nothing here
    index.malignancy_mean = np.where(malignant, 4.0, 2.0)
    index.features[:, :, 0] += 4.0 * malignant  # the embedding does
    index.__post_init__()
    folds = {p: int(p[1:]) % 2 for p in set(index.patient_id)}
    res = evaluate_out_of_fold(index, folds, [0, 1], n_boot=200)
    assert res["neighbours_auroc"]["auroc"] > 0.9
    assert abs(res["size_lookup_auroc"]["auroc"] - 0.5) < 0.15
    assert res["neighbours_minus_size_lookup"]["lo"] > 0
    look = size_lookup(index, 0)
    assert 0 not in look and all(index.patient_id[look] != index.patient_id[0])


def test_an_analysis_lists_its_neighbours_in_result_json(data_dir):
    """With an index beside the weights, a result carries the k nearest and their summary."""
    import SimpleITK as sitk

    from NoduleMalignancyLib.core.geometry import ImageGeometry
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.nodule.analysis import analyze_point
    from NoduleMalignancyLib.training.dataset import load_records

    ensemble = Ensemble.load(device="cpu")
    ensemble.similar_index = None  # the shipped index is replaced by one made here
    record = load_records(data_dir)[0]
    image = sitk.ReadImage(str(record.image_path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    geometry = ImageGeometry.from_sitk(image)
    plain = analyze_point(array, geometry, record.center_lps, ensemble, map_to_ct=False)
    features = plain.fold_bag_features
    assert features.shape == (len(ensemble.models), 112)
    rng = np.random.default_rng(4)
    index = _index(rng, m=40, k=features.shape[0], f=features.shape[1])
    index.features[:, 5] = features  # nodule 5 is the query's twin
    index.__post_init__()
    ensemble.similar_index = index
    found = analyze_point(array, geometry, record.center_lps, ensemble, map_to_ct=False)
    summary = found.summary()
    assert [n["nodule"] for n in summary["similar_nodules"]][0] == "P2_R_1"
    assert len(summary["similar_nodules"]) == 6
    assert summary["similar_nodules_summary"] == summary_line(found.similar_nodules)
    assert "similar_nodules" not in plain.summary() or plain.summary()["similar_nodules"] == []
    # The CT's own patient is never offered (an LIDC CT would find the clicked nodule itself).
    twin_patient = summary["similar_nodules"][0]["patient_id"]
    other = analyze_point(
        array, geometry, record.center_lps, ensemble, map_to_ct=False, patient_id=twin_patient
    )
    assert other.similar_nodules and all(
        n.patient_id != twin_patient for n in other.similar_nodules
    )


# The surfaces: thumbnails, the station panel, the report image, the MRML table ------------------


def _neighbours(names=("LIDC-IDRI-0001_R_1", "LIDC-IDRI-0003_R_3"), ratings=(4.75, 2.5)):
    from NoduleMalignancyLib.core.model.similar import SimilarNodule

    return [
        SimilarNodule(n, n.split("_R_")[0], 0.5 + i, 20.04 - 5 * i, r, {"malignancy": r})
        for i, (n, r) in enumerate(zip(names, ratings, strict=True))
    ]


def test_a_thumbnail_is_the_axial_slice_through_the_neighbour_in_the_lung_window(
    data_dir, monkeypatch
):
    """LIDC-IDRI-0001_R_1 (a 23 mm solid nodule): soft tissue at the centre, lung around it, the
    5 mm bar; cached; a PNG a browser reads; none without the data folder or for no VOI."""
    import io
    import time

    from PIL import Image

    from NoduleMalignancyLib.core.settings import DATA_ENV
    from NoduleMalignancyLib.files import lidc_thumbnails as thumbs

    monkeypatch.setenv(DATA_ENV, str(data_dir))
    thumbs._render.cache_clear()
    started = time.perf_counter()
    grey = thumbs.thumbnail("LIDC-IDRI-0001_R_1")
    first = time.perf_counter() - started
    assert grey.shape == (thumbs.THUMBNAIL_PX,) * 2 and grey.dtype == np.uint8
    c = thumbs.THUMBNAIL_PX // 2
    # Lung window W1500/L-600: soft tissue (~40 HU) maps near white, lung (-850 HU) near 85.
    assert np.median(grey[c - 4 : c + 4, c - 4 : c + 4]) > 200
    assert np.percentile(grey, 5) < 110, "some lung around the nodule"
    assert (grey == 255).sum() >= 2 * round(thumbs.BAR_MM / (58.0 / thumbs.THUMBNAIL_PX)) - 4
    started = time.perf_counter()
    assert thumbs.thumbnail("LIDC-IDRI-0001_R_1") is grey  # cached
    cached = time.perf_counter() - started
    uri = thumbs.thumbnail_data_uri("LIDC-IDRI-0001_R_1")
    assert uri.startswith("data:image/png;base64,")
    import base64

    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert np.array_equal(decoded, grey)
    print(f"\nthumbnail: first {1000 * first:.1f} ms, cached {1000 * cached:.3f} ms, {len(uri)} B")
    assert thumbs.thumbnail("LIDC-IDRI-9999_R_1") is None
    monkeypatch.delenv(DATA_ENV)
    assert thumbs.thumbnail("LIDC-IDRI-0001_R_1") is None
    assert thumbs.thumbnail_data_uri("LIDC-IDRI-0001_R_1") == ""


def test_the_panel_lists_the_neighbours_apart_from_the_details_and_withholds_them():
    """Station panel: the summary line and per neighbour its name, diameter and reader rating
    (with a thumbnail address when given one), not a row of the details; withheld (behind
    "show anyway") when not assessed; absent without neighbours."""
    from NoduleMalignancyLib.station.panel import result_panel

    neighbours = _neighbours()
    summary = {
        "malignancy_probability": 0.6,
        "similar_nodules": [n.to_dict() for n in neighbours],
        "similar_nodules_summary": summary_line(neighbours),
        "diameter_mm": 12.0,
    }
    panel = result_panel(summary, "N1", thumbnail=lambda name: f"img:{name}")
    similar = panel["similar"]
    assert similar["summary"] == "2 similar LIDC nodules: 1 rated suspicious"
    assert not similar["withheld"]
    first, second = similar["neighbours"]
    assert (
        first["nodule"] == "LIDC-IDRI-0001_R_1" and first["thumbnail"] == "img:LIDC-IDRI-0001_R_1"
    )
    assert first["diameter_text"] == "20.0 mm" and first["rating_text"] == "4.8"
    assert first["suspicious"] and not second["suspicious"] and second["rating_text"] == "2.5"
    assert all(s["group"] != "similar" for s in panel["sections"])
    assert result_panel(summary, "N1")["similar"]["neighbours"][0]["thumbnail"] == ""
    not_assessed = result_panel(summary | {"assessment": "not_assessed"}, "N1")
    assert not_assessed["similar"]["withheld"]
    assert result_panel({"malignancy_probability": 0.6}, "N1")["similar"] is None


@pytest.fixture(scope="module")
def answered(result):  # noqa: F811 (the imported fixture)
    """A real analysis (tiny random ensemble) with two neighbours, and the same not assessed."""
    import dataclasses

    from NoduleMalignancyLib.core.scope.validation import Finding

    answer = dataclasses.replace(result, warnings=[], similar_nodules=_neighbours())
    off = Finding("outside_lung", "The point lies outside the lungs (test).")
    return answer, dataclasses.replace(answer, warnings=[off])


def test_the_report_image_shows_the_summary_and_the_neighbours_thumbnails(
    answered, data_dir, monkeypatch, tmp_path
):
    from NoduleMalignancyLib.core.settings import DATA_ENV
    from NoduleMalignancyLib.files.report_image import report_figure, write_report

    answer, not_assessed = answered
    hu = np.full(answer.segmentation_mask_voi.shape, -800.0, np.float32)
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    fig = report_figure(answer, hu)
    texts = [ax.get_title(loc="left") for ax in fig.axes] + [ax.get_xlabel() for ax in fig.axes]
    assert any("2 similar LIDC nodules: 1 rated suspicious" in t for t in texts), texts
    assert any(t.startswith("LIDC-IDRI-0001_R_1\n20.0 mm, reader rating 4.8") for t in texts)
    thumbs = [ax for ax in fig.axes if ax.get_xlabel().startswith("LIDC-IDRI-")]
    assert len(thumbs) == 2 and all(len(ax.images) == 1 for ax in thumbs)
    assert write_report(answer, hu, tmp_path / "r.png").stat().st_size > 0
    monkeypatch.delenv(DATA_ENV)  # no data folder: the same row, text only
    fig = report_figure(answer, hu)
    captions = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(c.startswith("LIDC-IDRI-0003_R_3\n15.0 mm, reader rating 2.5") for c in captions)
    assert not any(ax.images for ax in fig.axes if ax.get_xlabel().startswith("LIDC-IDRI-"))
    # Not assessed: no similar nodules (they say malignancy), as no malignancy is given.
    fig = report_figure(not_assessed, hu)
    assert not any("similar LIDC" in ax.get_title(loc="left") for ax in fig.axes)
    assert fig.get_size_inches()[1] == 7.5


def test_the_mrml_table_and_the_status_line_carry_the_summary(answered, mrml_scene):
    """The module's results table (real slicer-core MRML) has the summary column, empty when
    not assessed; the module's status line (core.scope.assessment.answer_lines) ends with it."""
    from NoduleMalignancyLib.core.result_schema import field
    from NoduleMalignancyLib.core.scope.assessment import answer_lines
    from NoduleMalignancyLib.mrml.nodes import ResultNodes
    from NoduleMalignancyLib.mrml.requests import PointRequest

    answer, not_assessed = answered
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    nodes = ResultNodes(mrml_scene)
    table = nodes.table_node(volume, markups, [])
    for i, answer_i in enumerate((answer, not_assessed)):
        point = PointRequest(f"id{i}", f"P-{i}", i, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        nodes.update_row(table, point, answer_i)
    column = table.GetTable().GetColumnByName("similar_nodules_summary")
    assert column is not None
    assert (
        table.GetColumnTitle("similar_nodules_summary") == field("similar_nodules_summary").heading
    )
    assert column.GetValue(0) == "2 similar LIDC nodules: 1 rated suspicious"
    assert column.GetValue(1) == ""
    assert answer_lines(answer, "P-0")[-1] == "2 similar LIDC nodules: 1 rated suspicious"
    assert not any("similar" in line for line in answer_lines(not_assessed, "P-1"))
