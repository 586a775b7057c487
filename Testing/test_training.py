"""Training package: targets, folds, augmentation, the fold loop (resume, phases) and export.

Runs on a small slice of the real LIDC VOIs (12 nodules of 9 patients, two of them stored with a
flipped (-1, -1, 1) direction) with a tiny network, so the whole file stays well under 2 minutes.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.config import ATTRIBUTES, VoiConfig
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model import folds
from NoduleMalignancyLib.core.model.metrics import auroc
from NoduleMalignancyLib.core.nodule.voi import sample_voi
from NoduleMalignancyLib.training import augment
from NoduleMalignancyLib.training.dataset import (
    build_cache,
    canvas_config,
    load_records,
    malignancy_label,
    sample_record,
    targets_from_reader_row,
)
from NoduleMalignancyLib.training.train import (
    BEST,
    CHECKPOINT,
    HISTORY,
    OOF,
    OOF_COLUMNS,
    WIDTH_PRESETS,
    PhaseConfig,
    TrainConfig,
    export_ensemble,
    train_fold,
)

SLICE_PATIENTS = (
    "LIDC-IDRI-0001",
    "LIDC-IDRI-0003",
    "LIDC-IDRI-0004",
    "LIDC-IDRI-0005",
    "LIDC-IDRI-0017",
    "LIDC-IDRI-0020",
    "LIDC-IDRI-0021",
    "LIDC-IDRI-0262",  # direction (-1, -1, 1)
    "LIDC-IDRI-0311",  # direction (-1, -1, 1)
)
A = {name: i for i, name in enumerate(ATTRIBUTES)}


def tiny_config(epochs: int = 1, **kw) -> TrainConfig:
    cfg = TrainConfig(
        network=WIDTH_PRESETS["tiny"],
        batch_size=4,
        eval_batch_size=8,
        threads=2,
        k=3,
        select_window=1,
        **kw,
    )
    return cfg.with_epochs(epochs) if "phases" not in kw else cfg


@pytest.fixture(scope="module")
def records(data_dir):
    return load_records(data_dir)


@pytest.fixture(scope="module")
def slice_data(data_dir, records, tmp_path_factory):
    recs = [r for r in records if r.patient_id in SLICE_PATIENTS]
    return build_cache(recs, VoiConfig(), cache=tmp_path_factory.mktemp("train_cache"))


@pytest.fixture(scope="module")
def slice_folds(slice_data):
    return folds.make_folds(
        slice_data.patient_ids, [r.malignancy_mean for r in slice_data.records], k=3, seed=2026
    )


# ----------------------------------------------------------------------------------------------
# Targets


def test_targets_from_reader_ratings(records):
    r = next(r for r in records if r.name == "LIDC-IDRI-0001_R_1")
    # subtlety 5;5;5;5, malignancy 5;5;5;4 (mean 4.75), calcification all 6, internal all 1.
    assert r.targets[A["subtlety"]] == pytest.approx(1.0)
    assert r.targets[A["malignancy"]] == pytest.approx((4.75 - 1) / 4)
    assert r.targets[A["calcification"]] == 0.0
    assert r.targets[A["internal_structure"]] == 0.0
    assert r.label == 1.0
    benign = next(r for r in records if r.name == "LIDC-IDRI-0004_R_1")
    assert benign.label == 0.0
    assert benign.targets[A["calcification"]] == pytest.approx(0.75)  # ratings 6;3;3;3

    row = {
        "subtlety_mean": "",
        "subtlety_readers": "2;4",
        "malignancy_mean": "3.0",
        "calcification_readers": "6;3;6;6",
        "internalStructure_readers": "1;2",
    }
    t = targets_from_reader_row(row)
    assert t[A["subtlety"]] == pytest.approx(0.5)  # mean of the readers when no mean column
    assert t[A["malignancy"]] == pytest.approx(0.5)
    assert t[A["calcification"]] == pytest.approx(0.25)
    assert t[A["internal_structure"]] == pytest.approx(0.5)
    assert math.isnan(t[A["margin"]])  # not rated: masked out of the loss
    assert math.isnan(malignancy_label(3.0))
    assert malignancy_label(3.25) == 1.0 and malignancy_label(2.75) == 0.0


def test_missing_images_are_skipped_with_a_note(records, caplog):
    names = {r.name for r in records}
    assert "LIDC-IDRI-1002_R_1" not in names
    assert len(records) == 794


# ----------------------------------------------------------------------------------------------
# Folds


def test_folds_patient_disjoint_stratified_and_reread(records, tmp_path):
    pids = [r.patient_id for r in records]
    means = [r.malignancy_mean for r in records]
    assignment = folds.make_folds(pids, means, k=5, seed=2026)
    assert set(assignment) == set(pids)
    assert folds.make_folds(pids, means, k=5, seed=2026) == assignment  # deterministic
    path = folds.write_folds(assignment, tmp_path / "folds.csv")
    assert folds.load_folds(path) == assignment

    fold_of = folds.fold_of(pids, assignment)
    counts = np.bincount(fold_of, minlength=5)
    assert counts.max() - counts.min() <= 0.1 * counts.mean()  # nodules balanced
    labels = np.array([r.label for r in records])
    pos = [np.nanmean(labels[fold_of == f]) for f in range(5)]
    assert max(pos) - min(pos) < 0.1  # malignant share similar in every fold
    # Every stratum's nodules are spread evenly over the folds.
    per_patient = {}
    for p, m in zip(pids, means, strict=True):
        per_patient[p] = max(per_patient.get(p, -1.0), m)
    for s in ("<=2", "(2,3)", "=3", "(3,4]", ">4"):
        members = [p for p in pids if folds.stratum(per_patient[p]) == s]
        n = np.bincount([assignment[p] for p in members], minlength=5)
        assert n.max() - n.min() <= max(3, 0.15 * n.mean()), (s, n)

    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,fold\nP1,0\nP1,1\n")
    with pytest.raises(ValueError, match="P1"):
        folds.load_folds(bad)
    with pytest.raises(ValueError, match="not in"):
        folds.ensure_folds(["P2"], [4.0], path=path)


# ----------------------------------------------------------------------------------------------
# Augmentation


def _direct(record, voi):
    image = sitk.ReadImage(str(record.image_path))
    return sample_voi(
        sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image), record.center_lps, voi
    )


def test_identity_augmentation_equals_sample_voi(slice_data):
    voi = slice_data.voi
    names = ["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0262_R_1", "LIDC-IDRI-0311_R_2"]
    idx = [i for i, r in enumerate(slice_data.records) if r.name in names]
    assert len(idx) == 3
    hu = torch.from_numpy(slice_data.hu[idx])
    valid = torch.from_numpy(slice_data.valid[idx])
    mask = torch.from_numpy(slice_data.mask[idx])
    crop, _, _ = augment.make_batch(hu, valid, mask, voi, train=False)
    p = augment.identity_params(len(idx))
    theta = augment.affine_theta(p, voi, hu.shape[-3:])
    h, v, _ = augment.warp(hu, valid, mask, theta, voi)
    warped = augment.make_channels(h, v, voi.windows, p["window_shift"], p["window_scale"])
    for j, i in enumerate(idx):
        ref = _direct(slice_data.records[i], voi)
        assert ref.valid.sum() > 1000
        np.testing.assert_allclose(crop[j].numpy(), ref.channels, atol=1e-3)
        np.testing.assert_allclose(warped[j].numpy(), ref.channels, atol=1e-3)


def test_canvas_mask_matches_direct_resampling(slice_data):
    from NoduleMalignancyLib.core.nodule.voi import resample_to_grid

    i = next(i for i, r in enumerate(slice_data.records) if r.name == "LIDC-IDRI-0001_R_1")
    r = slice_data.records[i]
    m_img = sitk.ReadImage(str(r.mask_path))
    ref = resample_to_grid(
        sitk.GetArrayFromImage(m_img).astype(np.float32),
        ImageGeometry.from_sitk(m_img),
        _direct(r, slice_data.voi).geometry,
    )
    crop = augment.center_crop(torch.from_numpy(slice_data.mask[i : i + 1]), (32, 48, 48))
    np.testing.assert_allclose(crop[0].float().numpy(), ref, atol=2e-3)
    assert ref.sum() > 100


def test_augmentations_keep_shape_and_ranges(slice_data):
    voi = slice_data.voi
    hu = torch.from_numpy(slice_data.hu)
    valid = torch.from_numpy(slice_data.valid)
    mask = torch.from_numpy(slice_data.mask)
    gen = torch.Generator().manual_seed(0)
    x, seg, v = augment.make_batch(hu, valid, mask, voi, augment.AugmentConfig(), gen)
    n = len(slice_data)
    assert x.shape == (n, voi.n_channels, *voi.shape_zyx)
    assert seg.shape == v.shape == (n, 1, *voi.shape_zyx)
    assert set(torch.unique(v).tolist()) <= {0.0, 1.0}
    assert torch.equal(x[:, -1:], v)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(seg.min()) >= 0.0 and float(seg.max()) <= 1.0
    assert float(seg.sum()) > 0  # nodules stay in view under the largest shifts
    # Invalid voxels read as outside_hu (air), as in sample_voi (no window jitter here).
    no_jitter = augment.AugmentConfig(window_shift_hu=0.0, window_scale=0.0)
    x2, _, v2 = augment.make_batch(hu, valid, mask, voi, no_jitter, gen)
    assert torch.all(x2[:, 0][v2[:, 0] == 0] == 0.0)
    assert not torch.equal(x2, x)

    # A pure x flip is the mirrored centre crop.
    crop, _, _ = augment.make_batch(hu, valid, mask, voi, train=False)
    p = augment.identity_params(n)
    p["flip_zyx"][:, 2] = -1.0
    h, vv, _ = augment.warp(hu, valid, mask, augment.affine_theta(p, voi, hu.shape[-3:]), voi)
    flipped = augment.make_channels(h, vv, voi.windows)
    torch.testing.assert_close(flipped, crop.flip(-1), atol=1e-3, rtol=0)
    # Reach of the transforms stays within the canvas in z.
    reach_z, _ = augment.max_reach_mm(voi, augment.AugmentConfig())
    assert reach_z <= (slice_data.canvas_zyx[0] - 1) / 2 * voi.spacing_zyx[0]


def _identity_warped(slice_data):
    """The canvases as tensors and their identity warp onto the VOI grid (what the transforms
    after the warp work on)."""
    voi = slice_data.voi
    hu = torch.from_numpy(slice_data.hu)
    valid = torch.from_numpy(slice_data.valid)
    mask = torch.from_numpy(slice_data.mask)
    theta = augment.affine_theta(augment.identity_params(len(hu)), voi, hu.shape[-3:])
    return (hu, valid, mask), augment.warp(hu, valid, mask, theta, voi)


def test_context_shrink_cuts_the_crop_but_never_the_nodule(slice_data):
    voi = slice_data.voi
    (hu, valid, mask), (h, v, m) = _identity_warped(slice_data)
    full = torch.ones(len(hu), 6, dtype=torch.float64)
    h2, v2 = augment.shrink_context(h, v, m, full, 6.0, voi)
    nodule = m >= 0.5
    assert torch.all(v2[nodule] == v[nodule])  # the nodule stays in view
    assert float(v2.sum()) < float(v.sum())  # the crop shrank
    assert torch.all(h2[v2 == 0] == voi.outside_hu) and torch.all(h2[v2 > 0] == h[v2 > 0])
    assert torch.equal(augment.shrink_context(h, v, m, full * 0, 6.0, voi)[1], v)
    # Off by default, and drawn from the generator only when on (older runs resume unchanged).
    assert augment.AugmentConfig().context_shrink_mm == 0.0
    assert "context_shrink" not in augment.random_params(2, augment.AugmentConfig())
    cfg = augment.AugmentConfig(context_shrink_mm=4.0)
    x, seg, vb = augment.make_batch(hu, valid, mask, voi, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(x[:, -1:], vb) and float(seg.sum()) > 0


def test_canvas_requires_even_margin():
    with pytest.raises(ValueError):
        canvas_config(VoiConfig(), (33, 72, 72))


def test_sample_record_is_the_canvas(slice_data):
    canvas = canvas_config(slice_data.voi, slice_data.canvas_zyx)
    s = sample_record(slice_data.records[0], canvas)
    np.testing.assert_array_equal(s["hu"], slice_data.hu[0])
    np.testing.assert_array_equal(s["valid"], slice_data.valid[0])


# ----------------------------------------------------------------------------------------------
# Training loop


def test_auroc_rank_based():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60).astype(float)
    s = np.round(rng.normal(size=60) + y, 1)  # rounded: ties
    pos, neg = s[y == 1], s[y == 0]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auroc(y, s) == pytest.approx(brute)
    y[0] = np.nan
    assert np.isfinite(auroc(y, s))
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def _history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_resume_and_export(slice_data, slice_folds, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(epochs=1)
    t0 = time.perf_counter()
    s1 = train_fold(0, cfg, slice_data, run, folds=slice_folds)
    fold_dir = run / "fold0"
    for name in (CHECKPOINT, HISTORY, OOF, BEST, "config.json", "summary.json"):
        assert (fold_dir / name).is_file(), name
    first = _history(fold_dir / HISTORY)
    assert len(first) == 1 and s1["epochs"] == 1
    assert time.perf_counter() - t0 < 60

    # "Killed" after epoch 1: a rerun with 2 epochs continues at epoch 2.
    train_fold(0, tiny_config(epochs=2), slice_data, run, folds=slice_folds)
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out
    assert "epoch 1/2" not in out and "epoch 2/2" in out
    hist = _history(fold_dir / HISTORY)
    assert [h["epoch"] for h in hist] == ["1", "2"]
    assert hist[0] == first[0]  # epoch 1 was not redone
    ckpt = torch.load(fold_dir / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 2

    # A finished fold is not retrained.
    train_fold(0, tiny_config(epochs=2), slice_data, run, folds=slice_folds)
    assert "already finished" in capsys.readouterr().out

    with open(fold_dir / OOF, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == OOF_COLUMNS

    # An oof.csv of an older version (without the measured columns) is rewritten from best.pt,
    # identically; the fold's provenance (config.json) stays that of the run that trained it.
    provenance = (fold_dir / "config.json").read_text()
    old = [c for c in OOF_COLUMNS if c not in ("seg_mean_hu", "seg_calcified_fraction")]
    with open(fold_dir / OOF, "w", newline="") as f:
        w = csv.DictWriter(f, old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    train_fold(0, tiny_config(epochs=2), slice_data, run, folds=slice_folds)
    assert "out-of-fold table rewritten" in capsys.readouterr().out
    with open(fold_dir / OOF, newline="") as f:
        assert list(csv.DictReader(f)) == rows
    assert (fold_dir / "config.json").read_text() == provenance
    for r in rows:
        assert -1000.0 <= float(r["seg_mean_hu"]) and 0.0 <= float(r["seg_calcified_fraction"]) <= 1
    held_out = {p for p, k in slice_folds.items() if k == 0}
    assert {r["patient_id"] for r in rows} == held_out
    assert len(rows) == sum(p in held_out for p in slice_data.patient_ids)
    for r in rows:
        assert 0.0 <= float(r["malignancy_prob"]) <= 1.0
        assert r["label"] in ("0", "1", "")

    # Export: run config + the finished folds -> manifest the Ensemble accepts.
    (run / "config.json").write_text(
        json.dumps({"train": cfg.to_dict(), "data_hash": slice_data.data_hash})
    )
    train_fold(1, cfg, slice_data, run, folds=slice_folds)
    models = tmp_path / "models"
    export_ensemble(run, models)
    from NoduleMalignancyLib.core.model.ensemble import Ensemble

    ens = Ensemble.load(models, device="cpu")
    assert len(ens.models) == 2
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["version"].startswith("lidc-mil-")
    assert manifest["training"]["data_hash"] == slice_data.data_hash
    assert set(manifest["fusion"]["features"]) >= {"head_logit", "calcified_fraction"}
    # The shown malignancy's calibration slope, fitted on the cross-fitted fused logits.
    calibration = manifest["fusion"]["calibration"]
    assert calibration["type"] == "logit_slope" and calibration["logit_slope"] > 0
    assert (run / OOF).is_file()
    # The exported fp16 weights are the best EMA weights.
    best = torch.load(run / "fold0" / BEST, weights_only=True)
    exported = ens.models[0].state_dict()
    for k, v in best.items():
        torch.testing.assert_close(exported[k], v.half().float())


def test_phases_train_only_active_parts(slice_data, slice_folds, tmp_path):
    run = tmp_path / "run"
    p1 = PhaseConfig(name="all", epochs=1, lr=2e-3)
    # Fine-tuning on "another cohort" (here: the slice again, under another name).
    p2 = PhaseConfig(
        name="malignancy",
        epochs=1,
        lr=2e-3,
        attributes=("malignancy",),
        segmentation=False,
        data="other-cohort",
    )
    train_fold(0, tiny_config(phases=(p1,)), slice_data, run, folds=slice_folds)
    before = torch.load(run / "fold0" / CHECKPOINT, weights_only=True)["model"]
    train_fold(
        0,
        tiny_config(phases=(p1, p2)),
        slice_data,
        run,
        folds=slice_folds,
        phase_data={"other-cohort": slice_data},
    )
    after = torch.load(run / "fold0" / CHECKPOINT, weights_only=True)["model"]
    hist = _history(run / "fold0" / HISTORY)
    assert [h["phase"] for h in hist] == ["all", "malignancy"]
    assert float(hist[1]["train_segmentation"]) == 0.0

    decoder = [k for k in before if k.startswith(("dec", "seg_head"))]
    assert decoder
    for k in decoder:  # segmentation off: the decoder is not touched
        torch.testing.assert_close(after[k], before[k], atol=0, rtol=0)
    m = A["malignancy"]
    others = [i for i in range(len(ATTRIBUTES)) if i != m]
    for s in range(3):
        w0, w1 = before[f"instance_heads.{s}.weight"], after[f"instance_heads.{s}.weight"]
        assert (w1[m] - w0[m]).abs().max() > 1e-4  # malignancy head trained
        assert (w1[others] - w0[others]).abs().max() < 1e-5  # masked heads: weight decay only
    enc = [k for k in before if k.startswith("encoder")]
    assert any(not torch.equal(before[k], after[k]) for k in enc)


def test_confident_phase_keeps_only_confidently_rated_training_nodules(slice_data, slice_folds):
    from NoduleMalignancyLib.training.fold import train_indices_for_phase

    phase = PhaseConfig.from_dict({"malignancy_confident": [2.2, 3.8]})
    assert phase.malignancy_confident == (2.2, 3.8)
    assert PhaseConfig.from_dict(asdict(phase)) == phase
    with pytest.raises(ValueError, match="malignancy_confident"):
        PhaseConfig.from_dict({"malignancy_confident": [3.8, 2.2]})
    _, every = train_indices_for_phase(PhaseConfig(), 0, slice_data, slice_folds, {})
    _, kept = train_indices_for_phase(phase, 0, slice_data, slice_folds, {})
    mean = np.array([r.malignancy_mean for r in slice_data.records])
    confident = (mean <= 2.2) | (mean >= 3.8)
    assert 0 < len(kept) < len(every)
    assert list(kept) == [i for i in every if confident[i]]


def test_init_from_ensemble_fine_tunes_its_fold_weights(slice_data, slice_folds, tmp_path):
    from NoduleMalignancyLib.core.model.ensemble import WeightsError, write_random_ensemble
    from NoduleMalignancyLib.core.model.folds import write_folds
    from NoduleMalignancyLib.training.distributed import SINGLE
    from NoduleMalignancyLib.training.train import _write_run_config, init_provenance

    ens = tmp_path / "ens"
    manifest = write_random_ensemble(ens, k=3, seed=1)
    phase = PhaseConfig(
        name="malignancy_confident",
        epochs=1,
        lr=2e-4,
        attributes=("malignancy",),
        segmentation=False,
        freeze=("encoder",),
        loss_weights={"gate": 0.0, "scales": 0.0},
        malignancy_confident=(2.2, 3.8),
    )
    cfg = tiny_config(phases=(phase,), init_from=str(ens))
    run = tmp_path / "run"
    summary = train_fold(1, cfg, slice_data, run, folds=slice_folds)

    start = torch.load(ens / "fold1.pt", weights_only=True)  # fp16, as shipped
    tuned = torch.load(run / "fold1" / BEST, weights_only=True)
    frozen = [k for k in start if k.startswith(("encoder", "dec", "seg_head"))]
    assert frozen
    for k in frozen:  # frozen encoder, decoder not run: exactly the ensemble's fold-1 weights
        torch.testing.assert_close(tuned[k], start[k].float(), atol=0, rtol=0)
    m = A["malignancy"]
    assert not torch.equal(tuned["instance_heads.0.weight"][m], start["instance_heads.0.weight"][m])
    provenance = json.loads((run / "fold1" / "config.json").read_text())
    assert provenance["init_from"]["sha256"] == manifest.folds[1]["sha256"]
    assert provenance["train"]["phases"][0]["malignancy_confident"] == [2.2, 3.8]
    # Validation is the whole held-out fold, not only its confidently rated nodules.
    held_out = [p for p in slice_data.patient_ids if slice_folds[p] == 1]
    assert summary["n_val"] == len(held_out)
    confident = [r for r in slice_data.records if slice_folds[r.patient_id] != 1]
    confident = [r for r in confident if r.malignancy_mean <= 2.2 or r.malignancy_mean >= 3.8]
    assert summary["n_train_per_phase"] == {"malignancy_confident": len(confident)}

    # Run config and the exported manifest name the ensemble the folds started from.
    folds_file = write_folds(slice_folds, tmp_path / "folds.csv")
    _write_run_config(
        run, cfg, slice_data, None, folds_file, [1], False, SINGLE, init_provenance(cfg)
    )
    exported = export_ensemble(run, tmp_path / "tuned")
    init = exported["training"]["init_from"]
    assert init["version"] == manifest.version
    assert [f["sha256"] for f in init["folds"]] == [f["sha256"] for f in manifest.folds]
    assert exported["training"]["phases"][0]["malignancy_confident"] == [2.2, 3.8]

    # Refused: another network, another VOI, a fold the ensemble lacks, a corrupt file.
    with pytest.raises(ValueError, match="network configuration"):
        train_fold(
            1,
            replace(cfg, network=WIDTH_PRESETS["light"]),
            slice_data,
            tmp_path / "a",
            folds=slice_folds,
        )
    with pytest.raises(ValueError, match="voi configuration"):
        voi = replace(cfg.voi, outside_hu=-900.0)
        train_fold(1, replace(cfg, voi=voi), slice_data, tmp_path / "b", folds=slice_folds)
    with pytest.raises(ValueError, match="no weights of fold 3"):
        train_fold(3, cfg, slice_data, tmp_path / "c", folds={p: 3 for p in slice_folds})
    (ens / "fold1.pt").write_bytes(b"not weights")
    with pytest.raises(WeightsError, match="corrupt or was replaced"):
        train_fold(1, cfg, slice_data, tmp_path / "d", folds=slice_folds)


def test_class_balanced_sampling():
    from NoduleMalignancyLib.training.optimization import epoch_order

    labels = np.array([1.0] * 10 + [0.0] * 90 + [np.nan] * 20)
    gen = torch.Generator().manual_seed(0)
    assert sorted(epoch_order(120, labels, False, gen).tolist()) == list(range(120))
    drawn = np.concatenate([epoch_order(120, labels, True, gen).numpy() for _ in range(50)])
    share = np.bincount(np.where(np.isfinite(labels), labels, 2).astype(int)[drawn]) / len(drawn)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.03)


def test_cli_registers_train(tmp_path):
    from NoduleMalignancyLib.cli import build_parser
    from NoduleMalignancyLib.training.cli import build_config

    args = build_parser().parse_args(
        ["train", "--folds", "0,2", "--width", "tiny", "--epochs", "3", "--no-resume"]
    )
    assert args.folds == [0, 2] and args.resume is False
    cfg = build_config(args)
    assert cfg.total_epochs == 3 and cfg.network.widths == WIDTH_PRESETS["tiny"].widths
    assert cfg.network.head_dropout == 0.2  # the shipped recipe's, kept under another width
    conf = tmp_path / "c.json"
    conf.write_text(
        json.dumps({"phases": [{"epochs": 2}, {"epochs": 1, "attributes": ["malignancy"]}], "k": 5})
    )
    args = build_parser().parse_args(["train", "--config", str(conf), "--batch-size", "8"])
    cfg = build_config(args)
    assert cfg.total_epochs == 3 and cfg.batch_size == 8
    assert cfg.phases[1].attributes == ("malignancy",)
    assert replace(cfg, k=5) == TrainConfig.from_dict(cfg.to_dict())


def test_train_without_config_is_the_shipped_recipe():
    """`train` with no --config reproduces the shipped ensemble's recipe, as its experiment
    file and the model card describe it."""
    from NoduleMalignancyLib.cli import build_parser
    from NoduleMalignancyLib.training.cli import build_config

    repo = Path(__file__).resolve().parents[1]
    recipe = repo / "docs/experiments/head_dropout_entropy_0.01_gate_band_60.json"
    cfg = build_config(build_parser().parse_args(["train"]))
    assert cfg == TrainConfig.from_dict(json.loads(recipe.read_text()))
    manifest = json.loads((repo / "models/manifest.json").read_text())
    assert manifest["training"]["epochs"] == cfg.total_epochs


@pytest.mark.slow
def test_kill_dash_nine_then_resume(data_dir, tmp_path):
    """A real ``kill -9`` mid-run: the rerun continues after the last checkpointed epoch."""
    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "NoduleMalignancyLib.cli",
        "train",
        "--data",
        str(data_dir),
        "--run-dir",
        str(run),
        "--folds",
        "0",
        "--folds-file",
        str(tmp_path / "folds.csv"),
        "--width",
        "tiny",
        "--epochs",
        "3",
        "--limit",
        "40",
        "--batch-size",
        "8",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run / "fold0" / HISTORY
    deadline = time.time() + 600
    while time.time() < deadline and not (history.is_file() and len(_history(history)) >= 1):
        time.sleep(0.5)
    proc.kill()  # SIGKILL
    proc.wait()
    done = len(_history(history))
    assert 1 <= done < 3
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=True).stdout
    assert f"resuming after epoch {done}" in out
    assert [int(h["epoch"]) for h in _history(history)] == [1, 2, 3]
    assert (run / "fold0" / BEST).is_file()


def test_coarse_dropout_fills_boxes_with_lung_and_takes_them_out_of_the_target(slice_data):
    voi = slice_data.voi
    (hu, valid, mask), (h, v, m) = _identity_warped(slice_data)
    cfg = augment.AugmentConfig(coarse_dropout_holes=1, coarse_dropout_mm=(6.0, 6.0))
    # One hole per sample, centred on the VOI's centre, 6 mm on each side.
    draws = torch.tensor([[[0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    h2, m2 = augment.coarse_dropout(h, v, m, draws.expand(len(hu), 1, 7), cfg, voi)
    centre = tuple(n // 2 for n in voi.shape_zyx)
    hole = (h2 == cfg.coarse_dropout_hu) & (h != cfg.coarse_dropout_hu)
    assert bool(hole[(slice(None), *centre)].all() or (v[(slice(None), *centre)] == 0).any())
    sides = [int(hole[0].any(dim=tuple(b for b in range(3) if b != a)).sum()) for a in range(3)]
    expected = [round(6.0 / s) + 1 for s in voi.spacing_zyx]  # voxels within +-3 mm
    assert all(abs(got - want) <= 1 for got, want in zip(sides, expected, strict=True))
    assert torch.all(m2[hole] == 0) and torch.equal(m2[~hole], m[~hole])
    assert torch.equal(h2[v == 0], h[v == 0])  # outside the crop stays outside
    assert torch.equal(h2[~hole], h[~hole])
    # A hole whose first draw is 0.5 or more is not used; off by default, drawn only when on.
    unused = draws.clone()
    unused[..., 0] = 0.9
    assert torch.equal(
        augment.coarse_dropout(h, v, m, unused.expand(len(hu), 1, 7), cfg, voi)[0], h
    )
    assert "coarse_dropout" not in augment.random_params(2, augment.AugmentConfig())
    on = augment.AugmentConfig(coarse_dropout_holes=3)
    assert augment.AugmentConfig.from_dict(on.to_dict()) == on
    x, seg, vb = augment.make_batch(hu, valid, mask, voi, on, torch.Generator().manual_seed(1))
    assert torch.equal(x[:, -1:], vb) and float(seg.sum()) > 0
