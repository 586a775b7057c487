"""``bench-repeatability`` (issue 29 item 3): the clicks it makes and the figures it reports.

The click sets are checked on a phantom mask (where they fall), the spread on constructed
answers (what counts as the same Lung-RADS category), and the whole benchmark end to end on
one real LIDC VOI through the CLI, out of fold.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.evaluation import repeatability


def _grid(shape_zyx=(9, 21, 21), spacing_xyz=(0.7, 0.7, 2.5)) -> ImageGeometry:
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    return ImageGeometry((10.0, -5.0, 100.0), spacing_xyz, identity, shape_zyx[::-1])


def test_near_clicks_lie_at_min_1mm_or_a_sixth_of_the_diameter():
    rng = np.random.default_rng(0)
    centre = np.array([1.0, 2.0, 3.0])
    for diameter, radius in ((12.0, 1.0), (4.2, 0.7)):
        points = repeatability.near_clicks(centre, diameter, rng)
        assert points.shape == (4, 3)
        np.testing.assert_allclose(np.linalg.norm(points - centre, axis=1), radius)


def test_inner_clicks_are_voxels_of_the_inner_third_of_the_mask():
    geometry = _grid()
    z, y, x = np.mgrid[0:9, 0:21, 0:21]
    mm = np.stack([(z - 4) * 2.5, (y - 10) * 0.7, (x - 10) * 0.7], -1)
    mask = (np.linalg.norm(mm, axis=-1) <= 5.0).astype(np.uint8)
    points = repeatability.inner_clicks(mask, geometry, np.random.default_rng(1))
    assert points.shape == (4, 3)
    index = np.rint(geometry.lps_to_index(points)).astype(int)
    assert all(mask[k, j, i] for i, j, k in index)
    centre = geometry.index_to_lps(np.array([10.0, 10.0, 4.0]))
    # The inner third of a 5 mm sphere on 2.5 mm slices: the centre slice, within ~2 mm of it.
    assert np.linalg.norm(points - centre, axis=1).max() < 2.5
    assert (
        repeatability.inner_clicks(np.zeros_like(mask), geometry, np.random.default_rng(1)).size
        == 0
    )


def _answer(lung_rads="2", malignancy=10.0, diameter=6.0, volume=100.0) -> dict:
    return {
        "malignancy": malignancy,
        "diameter_mm": diameter,
        "volume_mm3": volume,
        "lung_rads": lung_rads,
    }


def test_spread_counts_a_changed_category_or_a_refused_click_as_not_identical():
    same = repeatability._spread([_answer(), _answer(malignancy=13.5, diameter=6.6)])
    assert same["lung_rads_identical"] is True
    assert same["malignancy_range"] == pytest.approx(3.5)
    assert same["diameter_cv"] == pytest.approx(0.3 / 6.3)
    assert repeatability._spread([_answer(), _answer("3")])["lung_rads_identical"] is False
    refused = repeatability._spread([_answer(), _answer(), {"refused": "no_nodule_at_point"}])
    assert refused["lung_rads_identical"] is False and refused["refused"] == 1
    rows = [{"near": same, "inner": refused}, {"near": repeatability._spread([_answer()])}]
    summary = repeatability.summarize(rows)
    assert summary["near"]["nodules"] == 1  # a nodule with one answer has no spread
    assert summary["inner"]["with_a_refused_click"] == 1


def test_bench_repeatability_on_a_voi_out_of_fold(data_dir, tmp_path, capsys):
    from NoduleMalignancyLib.cli import main

    out = tmp_path / "repeatability.json"
    assert main(["bench-repeatability", "--limit", "1", "--seed", "3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["nodules"] == 1 and res["seed"] == 3
    for row in res["rows"]:
        assert "malignancy" in row["centre"]
        assert row["near"]["n"] + row["near"].get("refused", 0) == 5
    assert set(res["summary"]) == {"near", "inner", "centre"}
    assert 0.0 < res["rows"][0]["centre"]["dice"] <= 1.0
    printed = capsys.readouterr().out
    assert "near: Lung-RADS identical" in printed and "inner: Lung-RADS identical" in printed
    assert "centre click: outline Dice" in printed
