"""Similar nodules (core/similar.py): the embedding, the search, the index file and its binding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from NoduleMalignancyLib.core.config import ATTRIBUTES, NetworkConfig
from NoduleMalignancyLib.core.network import build_network
from NoduleMalignancyLib.core.similar import (
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

    from NoduleMalignancyLib.core.analysis import analyze_point
    from NoduleMalignancyLib.core.ensemble import Ensemble
    from NoduleMalignancyLib.core.geometry import ImageGeometry
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
    result = analyze_point(array, geometry, record.center_lps, ensemble, map_to_ct=False)
    summary = result.summary()
    assert [n["nodule"] for n in summary["similar_nodules"]][0] == "P2_R_1"
    assert len(summary["similar_nodules"]) == 6
    assert summary["similar_nodules_summary"] == summary_line(result.similar_nodules)
    assert "similar_nodules" not in plain.summary() or plain.summary()["similar_nodules"] == []
