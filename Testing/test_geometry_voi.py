"""Geometry and VOI sampling, pinned on real LIDC data against SimpleITK's own resampler."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.core.config import VoiConfig
from NoduleMalignancyLib.core.geometry import (
    ImageGeometry,
    bounding_box,
    lps_to_ras,
    ras_to_lps,
)
from NoduleMalignancyLib.core.nodule.voi import (
    PointOutsideVolumeError,
    context_box_for_nodule,
    grid_points_lps,
    sample_voi,
    voi_geometry,
    voi_map_to_ct,
)


@pytest.fixture(scope="module")
def voi_rows(data_dir):
    with open(data_dir / "lidc_vois" / "metadata.csv", newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if (
                data_dir / "lidc_vois" / "image" / f"{r['patient_id']}_R_{r['nodule_id']}.nii.gz"
            ).is_file()
        ]
    return rows


def _read(data_dir, row, kind="image"):
    name = f"{row['patient_id']}_R_{row['nodule_id']}.nii.gz"
    return sitk.ReadImage(str(data_dir / "lidc_vois" / kind / name))


def _centre(row):
    return np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])


def _flipped_row(data_dir, voi_rows):
    for row in voi_rows:
        image = _read(data_dir, row)
        if image.GetDirection()[0] < 0:
            return row, image
    pytest.fail("no VOI with a flipped direction matrix in the data")


def _sitk_reference(image: sitk.Image, center_lps, cfg: VoiConfig) -> np.ndarray:
    """SimpleITK's linear resampling of the image onto the VOI grid (independent reference)."""
    g = voi_geometry(center_lps, cfg)
    ref = sitk.Image(list(g.size), sitk.sitkFloat32)
    g.apply_to_sitk(ref)
    out = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, -9999.0
    )
    return sitk.GetArrayFromImage(out)


def test_lps_ras_round_trip():
    p = np.array([12.5, -40.0, -110.0])
    assert np.allclose(lps_to_ras(p), [-12.5, 40.0, -110.0])
    assert np.allclose(ras_to_lps(lps_to_ras(p)), p)


def test_bounding_box_grows_clips_and_strides():
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[2:4, 5, 10:13] = True
    assert bounding_box(mask) == (slice(2, 4, 1), slice(5, 6, 1), slice(10, 13, 1))
    # grown per axis and clipped at the array's far edge (14) and near edge (0)
    assert bounding_box(mask, [3, 1, 2]) == (slice(0, 7, 1), slice(4, 7, 1), slice(8, 14, 1))
    strided = mask[bounding_box(mask, 1, step=2)]
    assert strided.shape == (2, 2, 3)


def test_index_to_lps_matches_simpleitk_on_flipped_lidc_voi(data_dir, voi_rows):
    _, image = _flipped_row(data_dir, voi_rows)
    g = ImageGeometry.from_sitk(image)
    for ijk in ([0, 0, 0], [3.25, 7.5, 1.0], [image.GetWidth() - 1, 2, image.GetDepth() - 1]):
        expected = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
        assert np.allclose(g.index_to_lps(ijk), expected, atol=1e-9)
        assert np.allclose(g.lps_to_index(expected), ijk, atol=1e-9)


def test_slicer_ijk_to_ras_round_trip(data_dir, voi_rows):
    _, image = _flipped_row(data_dir, voi_rows)
    g = ImageGeometry.from_sitk(image)
    m = g.ijk_to_ras_matrix()
    ijk = np.array([2.0, 5.0, 1.0, 1.0])
    assert np.allclose(ras_to_lps((m @ ijk)[:3]), g.index_to_lps(ijk[:3]))
    g2 = ImageGeometry.from_ijk_to_ras(m, g.size)
    assert np.allclose(g2.origin, g.origin) and np.allclose(g2.direction, g.direction)
    assert np.allclose(g2.spacing, g.spacing)


@pytest.mark.parametrize("which", ["identity", "flipped"])
def test_voi_matches_simpleitk_resampling(data_dir, voi_rows, which):
    if which == "flipped":
        row, image = _flipped_row(data_dir, voi_rows)
    else:
        row = voi_rows[0]
        image = _read(data_dir, row)
    cfg = VoiConfig()
    s = sample_voi(sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image), _centre(row), cfg)
    ref = _sitk_reference(image, _centre(row), cfg)
    inside = s.valid > 0
    assert inside.sum() > 0.1 * inside.size
    assert np.abs(s.hu[inside] - ref[inside]).max() < 1e-2
    assert np.all(s.hu[~inside] == cfg.outside_hu)
    # The VOI is centred on the point: the central voxel is where the reader's nodule is.
    mask = _read(data_dir, row, "nodule_mask")
    m = sample_voi(
        sitk.GetArrayFromImage(mask).astype(np.float32) * 1000.0 - 1000.0,
        ImageGeometry.from_sitk(mask),
        _centre(row),
        VoiConfig(windows=((-1000.0, 0.0),)),
    )
    d, h, w = (n // 2 for n in cfg.shape_zyx)
    assert m.channels[0, d - 1 : d + 1, h - 1 : h + 1, w - 1 : w + 1].max() > 0.5


def test_oblique_direction_is_honoured(data_dir, voi_rows):
    row = voi_rows[0]
    image = _read(data_dir, row)
    angle = np.deg2rad(25.0)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]]
    )
    centre_index = (np.array(image.GetSize()) - 1) / 2.0
    image.SetDirection(tuple(rot.ravel()))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(centre_index.tolist()))
    cfg = VoiConfig()
    s = sample_voi(sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image), centre, cfg)
    ref = _sitk_reference(image, centre, cfg)
    inside = s.valid > 0
    assert inside.sum() > 0.1 * inside.size
    assert np.abs(s.hu[inside] - ref[inside]).max() < 1e-2


def test_point_outside_volume_is_a_clear_error(data_dir, voi_rows):
    image = _read(data_dir, voi_rows[0])
    g = ImageGeometry.from_sitk(image)
    far = g.index_to_lps(np.array(g.size) + 20)
    with pytest.raises(PointOutsideVolumeError, match="outside the volume"):
        sample_voi(sitk.GetArrayFromImage(image), g, far, VoiConfig())


def test_outside_field_of_view_value_is_not_data(data_dir, voi_rows):
    row = voi_rows[0]
    image = _read(data_dir, row)
    array = sitk.GetArrayFromImage(image).copy()
    array[:, :, : array.shape[2] // 2] = -2048  # the LIDC outside-FOV value
    g = ImageGeometry.from_sitk(image)
    s = sample_voi(array, g, _centre(row), VoiConfig())
    pts = grid_points_lps(s.geometry)
    i = g.lps_to_index(pts)[..., 0]
    assert s.valid[i < array.shape[2] // 2 - 1].max() == 0
    assert s.hu.min() >= -1000.0  # no -2048 leaks into the network input


def test_voi_file_is_sub_array_of_full_ct_and_tensors_agree(data_dir, voi_rows, ct_0001_path):
    """The VOI of LIDC-IDRI-0001 nodule 1 and the full CT give the same network input.

    Tolerance: 1e-4 on the [0, 1] channels (float round-off of the two index computations).
    """
    row = next(r for r in voi_rows if r["patient_id"] == "LIDC-IDRI-0001")
    voi = _read(data_dir, row)
    ct = sitk.ReadImage(str(ct_0001_path))
    vg, cg = ImageGeometry.from_sitk(voi), ImageGeometry.from_sitk(ct)
    lo = np.rint(cg.lps_to_index(vg.origin)).astype(int)
    assert np.allclose(cg.lps_to_index(vg.origin), lo, atol=1e-3)
    nx, ny, nz = vg.size
    ct_array = sitk.GetArrayFromImage(ct)
    sub = ct_array[lo[2] : lo[2] + nz, lo[1] : lo[1] + ny, lo[0] : lo[0] + nx]
    assert np.array_equal(sub, sitk.GetArrayFromImage(voi))  # bit-identical
    cfg = VoiConfig()
    a = sample_voi(sitk.GetArrayFromImage(voi), vg, _centre(row), cfg)
    b = sample_voi(ct_array, cg, _centre(row), cfg, context=vg)
    assert np.array_equal(a.valid, b.valid)
    assert np.abs(a.channels - b.channels).max() < 1e-4
    # Without the context crop the full CT shows much more (what the policy prevents).
    c = sample_voi(ct_array, cg, _centre(row), cfg)
    assert c.valid.sum() > a.valid.sum()


def test_context_box_reproduces_training_crop_shape(data_dir, voi_rows, ct_0001_path):
    ct = sitk.ReadImage(str(ct_0001_path))
    cg = ImageGeometry.from_sitk(ct)
    row = next(r for r in voi_rows if r["patient_id"] == "LIDC-IDRI-0001")
    mask = _read(data_dir, row, "nodule_mask")
    mg = ImageGeometry.from_sitk(mask)
    kji = np.argwhere(sitk.GetArrayFromImage(mask) > 0)
    extent = mg.index_to_lps(kji[:, ::-1].astype(float))
    box = context_box_for_nodule(cg, _centre(row), extent)
    voi = _read(data_dir, row)
    # Same size as the real training crop within a few voxels in-plane and a slice in z.
    assert np.all(np.abs(np.array(box.size) - np.array(voi.GetSize())) <= [8, 8, 2])
    small = context_box_for_nodule(cg, _centre(row))
    assert small.size[0] >= 44 and small.size[1] >= 44


def test_density_map_integral_survives_mapping_to_ct(data_dir, voi_rows, ct_0001_path):
    ct = sitk.ReadImage(str(ct_0001_path))
    cg = ImageGeometry.from_sitk(ct)
    row = next(r for r in voi_rows if r["patient_id"] == "LIDC-IDRI-0001")
    vg = voi_geometry(_centre(row), VoiConfig())
    pts = grid_points_lps(vg) - _centre(row)
    blob = np.exp(-(pts**2).sum(-1) / (2 * 4.0**2)).astype(np.float32)  # per mm^3
    mapped, grid = voi_map_to_ct(blob, vg, cg)
    before = blob.sum() * np.prod(vg.spacing)
    after = mapped.sum() * np.prod(grid.spacing)
    assert abs(after - before) / before < 0.03


def test_ct_mask_is_the_measured_nodule_only():
    """The network also segments other structures in the crop (vessels, a second nodule); the
    outline mapped to the CT (shown in Slicer, exported as DICOM SEG) is the measured component
    only, at its volume. Before, a click on a vessel showed 25 times the measured volume."""
    from types import SimpleNamespace

    from NoduleMalignancyLib.core.nodule.analysis import map_results_to_ct

    voi = ImageGeometry(
        (0.0, 0.0, 0.0), (0.667, 0.667, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (48, 48, 32)
    )
    z, y, x = np.meshgrid(*(np.arange(n) for n in (32, 48, 48)), indexing="ij")
    pos = np.stack([x * 0.667, y * 0.667, z * 1.0], -1)
    measured = np.linalg.norm(pos - [16.0, 16.0, 16.0], axis=-1) < 4.0
    other = np.linalg.norm(pos - [26.0, 26.0, 16.0], axis=-1) < 4.0
    prob = np.where(measured | other, 0.95, 0.02).astype(np.float32)
    result = SimpleNamespace(
        segmentation_probability_voi=prob,
        segmentation_mask_voi=measured,
        voi_geometry=voi,
        evidence_voi={},
    )
    ct = ImageGeometry(
        (-5.0, -5.0, -5.0), (0.7, 0.7, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 1), (80, 80, 24)
    )
    map_results_to_ct(result, ct)
    volume = result.segmentation_mask_ct.sum() * 0.7 * 0.7 * 2.5
    assert volume == pytest.approx(measured.sum() * 0.667 * 0.667 * 1.0, rel=0.2)
    centre_other = np.rint(result.ct_grid.lps_to_index(np.array([26.0, 26.0, 16.0]))).astype(int)
    assert not result.segmentation_mask_ct[tuple(centre_other[::-1])]
