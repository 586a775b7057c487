"""The evidence-map evaluation (gate health, deletion test, locality) on real VOIs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.core.analysis import sample_and_run
from NoduleMalignancyLib.core.ensemble import Ensemble
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.evaluation.maps import (
    _deleted,
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
    summary = result["summary"]
    assert set(summary["gates"]) == {0, 1}
    text = report_markdown(summary, ensemble.version, "nodule-malignancy maps")
    assert "| 0 | fine |" in text and "Deletion test" in text
