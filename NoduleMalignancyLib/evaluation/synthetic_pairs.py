"""Synthetic prior/current CT pairs made from one real CT, for measuring the prior comparison
(core/prior/prior_compare.py) where no real follow-up pairs exist (docs/DESIGN.md §17). Everything
here is synthetic and says so: the same CT under a known affine transform with noise (stable
nodules), a nodule grown by a known volume factor, a nodule copied into the parenchyma of one
CT only.

Frames: the transforms are SimpleITK's, mapping a point of the CT being built to the point of
the source CT it is sampled from (world LPS); the true current -> prior map of a pair is the
inverse of the prior's transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..core.geometry import ImageGeometry

__all__ = [
    "NoduleRegion",
    "affine",
    "ball_region",
    "grow_nodule",
    "insert_nodule",
    "nodule_region",
    "random_affine",
    "transformed_ct",
]

NODULE_HU = -500.0  # a nodule's region: voxels above this, connected to its centre
BLEND_MM = 0.7  # the pasted region's edge: a Gaussian of this sigma


def _image(array_zyx: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    geometry.apply_to_sitk(image)
    return image


def affine(
    centre_lps,
    rotation_deg=(0.0, 0.0, 0.0),
    scale=(1.0, 1.0, 1.0),
    translation_mm=(0.0, 0.0, 0.0),
) -> sitk.AffineTransform:
    """Rotations about x, y, z (degrees) after a scaling along x, y, z, about ``centre_lps``,
    then a translation."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*np.deg2rad(np.asarray(rotation_deg, dtype=float)))
    matrix = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag(scale)
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(map(float, centre_lps)))
    transform.SetMatrix(tuple(map(float, matrix.ravel())))
    transform.SetTranslation(tuple(map(float, translation_mm)))
    return transform


def random_affine(
    rng: np.random.Generator, centre_lps, rigid: bool, max_deg=(2.0, 2.0, 6.0)
) -> sitk.AffineTransform:
    """A transform a repositioned patient could show: translations up to 15 mm, rotations
    up to ``max_deg`` about x, y, z (tilts are small on a CT table); with ``rigid`` False also
    scalings of 0.95-1.05 per axis (a different inspiration, roughly)."""
    rotation = rng.uniform(-1.0, 1.0, 3) * np.asarray(max_deg)
    scale = (1.0, 1.0, 1.0) if rigid else rng.uniform(0.95, 1.05, 3)
    return affine(centre_lps, rotation, scale, rng.uniform(-15.0, 15.0, 3))


def _kept_slices(
    geometry: ImageGeometry, transform: sitk.Transform, source: ImageGeometry
) -> tuple[int, int]:
    """The first and last slice of ``geometry`` whose corners all sample inside the source's
    slices: a tilt would otherwise leave fill at the ends, joining the lungs to the border
    (a real prior is cut by its own field of view instead)."""
    nx, ny, nz = geometry.size
    corners = np.array([[i, j] for i in (0, nx - 1) for j in (0, ny - 1)], dtype=float)
    inside = []
    for k in range(nz):
        ijk = np.column_stack([corners, np.full(len(corners), k)])
        points = [transform.TransformPoint(tuple(p)) for p in geometry.index_to_lps(ijk)]
        kk = source.lps_to_index(np.array(points))[:, 2]
        inside.append(bool(np.all((kk >= 0) & (kk <= source.size[2] - 1))))
    kept = np.flatnonzero(inside)
    if not len(kept):
        raise ValueError("the transform moves every slice out of the source CT")
    return int(kept[0]), int(kept[-1])


def transformed_ct(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    transform: sitk.Transform,
    noise_hu: float,
    seed: int,
    spacing_z_mm: float | None = None,
) -> tuple[np.ndarray, ImageGeometry]:
    """The CT resampled (linear) on its own grid (or one with ``spacing_z_mm`` between slices)
    under ``transform``, the slices at the ends that would sample outside it dropped, with
    Gaussian noise of ``noise_hu`` (int16; outside the source: its lowest value)."""
    spacing = (*geometry.spacing[:2], spacing_z_mm or geometry.spacing[2])
    extent_z = (geometry.size[2] - 1) * geometry.spacing[2]
    grid = ImageGeometry(
        geometry.origin, spacing, geometry.direction,
        (*geometry.size[:2], int(extent_z // spacing[2]) + 1),
    )  # fmt: skip
    first, last = _kept_slices(grid, transform, geometry)
    origin = grid.index_to_lps(np.array([0.0, 0.0, first]))
    grid = ImageGeometry(
        tuple(map(float, origin)), spacing, geometry.direction,
        (*geometry.size[:2], last - first + 1),
    )  # fmt: skip
    reference = _image(np.zeros(grid.shape_zyx, dtype=np.int16), grid)
    fill = float(np.min(image_zyx))
    moved = sitk.Resample(
        _image(image_zyx, geometry), reference, transform, sitk.sitkLinear, fill, sitk.sitkFloat32
    )
    array = sitk.GetArrayFromImage(moved)
    if noise_hu > 0:
        array += np.random.default_rng(seed).normal(0.0, noise_hu, array.shape).astype(np.float32)
    array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    return array, grid


@dataclass(frozen=True)
class NoduleRegion:
    """A nodule's voxels (HU above :data:`NODULE_HU`, connected to its centre, within
    ``radius_mm``) in a box of the CT."""

    box: tuple[slice, slice, slice]  # (z, y, x) slices of the CT
    mask: np.ndarray  # bool, the box's shape
    centre_lps: np.ndarray  # the region's centroid
    volume_mm3: float


def nodule_region(
    image_zyx: np.ndarray, geometry: ImageGeometry, point_lps, radius_mm: float
) -> NoduleRegion:
    """The nodule at ``point_lps`` as a threshold region: cut to a ball of ``radius_mm`` (so
    the vessels that join it stay out beyond that), holes filled."""
    spacing_zyx = np.asarray(geometry.spacing, dtype=float)[::-1]
    centre = np.rint(geometry.lps_to_index(point_lps)[::-1]).astype(int)
    half = np.ceil(radius_mm / spacing_zyx).astype(int) + 1
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, image_zyx.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
    offset = [(g - c) * s for g, c, s in zip(grid, centre, spacing_zyx, strict=True)]
    ball = np.sqrt(sum(o**2 for o in offset)) <= radius_mm
    dense = (image_zyx[box] > NODULE_HU) & ball
    labels, _ = ndimage.label(dense)
    at = labels[tuple(centre - lo)]
    if at == 0:
        raise ValueError(f"no voxel above {NODULE_HU} HU at the nodule's point {point_lps}")
    mask = ndimage.binary_fill_holes(labels == at)
    zyx = np.column_stack(np.nonzero(mask)).mean(0) + lo
    centroid = geometry.index_to_lps(zyx[::-1])
    return NoduleRegion(box, mask, centroid, float(mask.sum() * geometry.voxel_volume_mm3()))


def ball_region(geometry: ImageGeometry, point_lps, radius_mm: float) -> NoduleRegion:
    """A ball about ``point_lps``: a nodule's region with whatever its outline holds (ground
    glass, partial-volume edge, the stubs of its vessels), so that growing it grows the nodule
    as any segmentation sees it (a threshold region leaves a part solid nodule's ground glass
    out)."""
    spacing_zyx = np.asarray(geometry.spacing, dtype=float)[::-1]
    centre = geometry.lps_to_index(np.asarray(point_lps, dtype=float))[::-1]
    half = np.ceil(radius_mm / spacing_zyx).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - half, 0)
    hi = np.minimum(np.ceil(centre).astype(int) + half + 1, geometry.shape_zyx)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
    offset = [(g - c) * s for g, c, s in zip(grid, centre, spacing_zyx, strict=True)]
    mask = np.sqrt(sum(o**2 for o in offset)) <= radius_mm
    volume = float(mask.sum() * geometry.voxel_volume_mm3())
    return NoduleRegion(box, mask, np.asarray(point_lps, dtype=float), volume)


def _sub_grid(geometry: ImageGeometry, centre_lps, reach_mm: float):
    """The (z, y, x) box of the CT within ``reach_mm`` of a point, and its grid."""
    spacing_zyx = np.asarray(geometry.spacing, dtype=float)[::-1]
    centre = np.rint(geometry.lps_to_index(centre_lps)[::-1]).astype(int)
    half = np.ceil(reach_mm / spacing_zyx).astype(int) + 1
    shape = np.asarray(geometry.shape_zyx)
    lo, hi = np.clip(centre - half, 0, shape), np.clip(centre + half + 1, 0, shape)
    if np.any(hi <= lo):
        raise ValueError(f"{centre_lps} lies outside the CT")
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    origin = geometry.index_to_lps(lo[::-1].astype(float))
    size = tuple(int(v) for v in (hi - lo)[::-1])
    return box, ImageGeometry(tuple(map(float, origin)), geometry.spacing, geometry.direction, size)


def _paste(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    region: NoduleRegion,
    transform: sitk.Transform,
    target_lps,
    reach_mm: float,
    halo_mm: float = 1.5,
) -> np.ndarray:
    """A copy of the CT with the region, mapped by ``transform`` (a point of the new CT -> the
    point of the CT it is sampled from), pasted where it lands (within ``reach_mm`` of
    ``target_lps``): the mapped region grown by ``halo_mm`` or a voxel, whichever is more (the
    nodule's partial-volume edge, which the threshold region leaves out), with a Gaussian edge of :data:`BLEND_MM`; everything else unchanged."""
    spacing_zyx = np.asarray(geometry.spacing, dtype=float)[::-1]
    mask = np.zeros(image_zyx.shape, dtype=np.uint8)
    mask[region.box] = region.mask
    box, grid = _sub_grid(geometry, target_lps, reach_mm)
    reference = _image(np.zeros(grid.shape_zyx, dtype=np.float32), grid)
    landed = sitk.Resample(
        _image(mask, geometry), reference, transform, sitk.sitkNearestNeighbor, 0
    )
    landed = sitk.GetArrayFromImage(landed) > 0
    if not landed.any():
        raise ValueError("the region lands outside the CT")
    reach = max(halo_mm, float(spacing_zyx.max()))  # at least a voxel along every axis
    halo = ndimage.distance_transform_edt(~landed, sampling=spacing_zyx) <= reach
    weight = ndimage.gaussian_filter(halo.astype(np.float32), BLEND_MM / spacing_zyx)
    source = sitk.Resample(
        _image(image_zyx, geometry), reference, transform, sitk.sitkLinear, -1000.0,
        sitk.sitkFloat32,
    )  # fmt: skip
    out = image_zyx.copy()
    part = out[box].astype(np.float32)
    part = part * (1.0 - weight) + sitk.GetArrayFromImage(source) * weight
    out[box] = np.clip(np.rint(part), -32768, 32767).astype(image_zyx.dtype)
    return out


def grow_nodule(
    image_zyx: np.ndarray, geometry: ImageGeometry, region: NoduleRegion, volume_factor: float
) -> np.ndarray:
    """The CT with the nodule's region resampled about its centre, larger by ``volume_factor``
    in volume (its cube root in every direction), blended into the parenchyma around it."""
    linear = float(volume_factor) ** (1.0 / 3.0)
    shrink = sitk.ScaleTransform(3, (1.0 / linear,) * 3)
    shrink.SetCenter(tuple(map(float, region.centre_lps)))
    reach = _reach_mm(region, geometry) * linear + 5.0
    return _paste(image_zyx, geometry, region, shrink, region.centre_lps, reach)


def insert_nodule(
    image_zyx: np.ndarray, geometry: ImageGeometry, region: NoduleRegion, target_lps
) -> np.ndarray:
    """The CT with a copy of the nodule's region centred on ``target_lps`` (in the
    parenchyma), blended in; the original nodule stays."""
    shift = sitk.TranslationTransform(3, tuple(map(float, region.centre_lps - target_lps)))
    reach = _reach_mm(region, geometry) + 5.0
    return _paste(image_zyx, geometry, region, shift, target_lps, reach)


def _reach_mm(region: NoduleRegion, geometry: ImageGeometry) -> float:
    """The farthest voxel of the region from its centre, mm."""
    zyx = np.column_stack(np.nonzero(region.mask)) + [s.start for s in region.box]
    points = geometry.index_to_lps(zyx[:, ::-1].astype(float))
    return float(np.linalg.norm(points - region.centre_lps, axis=1).max())
