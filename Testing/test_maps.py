"""The evidence-map evaluation (gate health, deletion test, locality) on real VOIs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import sample_and_run
from NoduleMalignancyLib.evaluation.maps import (
    _deleted,
    edge_band,
    evaluate_maps,
    lung_background_hu,
    report_markdown,
)
from NoduleMalignancyLib.training.dataset import load_records


@pytest.fixture(scope="module")
def records(data_dir):
    return load_records(data_dir)[:6]


def test_deleting_nothing_reproduces_the_network_input(records, tiny_dir):
    ensemble = Ensemble.load(tiny_dir, device="cpu")
    image = sitk.ReadImage(str(records[0].image_path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    sample, out, _ = sample_and_run(
        array, ImageGeometry.from_sitk(image), records[0].center_lps, ensemble
    )
    none = np.zeros(sample.valid.shape, dtype=bool)
    np.testing.assert_array_equal(_deleted(sample, none, ensemble.manifest.voi)[0], sample.channels)
    background = lung_background_hu(sample.hu, sample.valid)
    assert -1000.0 <= background < -400.0
    everything = sample.valid > 0.5
    deleted = _deleted(sample, everything, ensemble.manifest.voi)[0]
    assert np.ptp(deleted[0][everything]) == 0.0  # one HU everywhere: the lung background


def test_evaluate_maps_out_of_fold(records, tiny_dir):
    ensemble = Ensemble.load(tiny_dir, device="cpu")  # folds 0 and 1
    folds = {r.patient_id: i % 2 for i, r in enumerate(records)}
    result = evaluate_maps(records, folds, ensemble)
    assert len(result["rows"]) == len(records)
    for row in result["rows"]:
        assert row["fold"] == folds[row["name"].split("_R_")[0]]
        assert 0.0 <= row["near_share"] <= 1.0 + 1e-6
        shares = [s["mass_share"] for s in row["gates"]["mean"].values()]
        assert sum(shares) == pytest.approx(1.0)
        assert 0.0 <= row["edge_share"] <= 1.0
        # No positive evidence (possible with random weights): no band figure either.
        assert np.isnan(row["top_drop"]) or 0.0 <= row["edge_fraction"] < 1.0
    summary = result["summary"]
    assert set(summary["gates"]) == {0, 1}
    text = report_markdown(summary, ensemble.version, "nodule-malignancy maps")
    assert "| 0 | fine |" in text and "Deletion test" in text and "Crop-edge band" in text


def test_edge_band_is_the_rim_of_the_valid_region():
    valid = np.zeros((10, 12, 12), dtype=bool)
    valid[2:8, 2:10, 2:10] = True  # a 6 x 8 x 8 crop inside an invalid margin
    band = edge_band(valid, (1.0, 1.0, 1.0), mm=1.0)
    assert not band[~valid].any()
    assert band[2, 5, 5] and band[5, 2, 5] and band[5, 5, 9]  # each face of the crop
    assert not band[5, 5, 5] and not band[3, 4, 4]  # two voxels in: interior
    full = np.ones((6, 6, 6), dtype=bool)  # no invalid voxel: the VOI faces are the edge
    assert edge_band(full, (1.0, 1.0, 1.0), mm=1.0)[0, 3, 3]
    assert not edge_band(full, (1.0, 1.0, 1.0), mm=1.0)[3, 3, 3]
