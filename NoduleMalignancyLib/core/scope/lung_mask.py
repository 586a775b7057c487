"""Which side of the pleura a click lies on, on a CT that shows the whole chest.

The model knows lung nodules only; a click on the chest wall, the mediastinum, the heart or the
liver next to the lung has lung around part of it, so the lung share around its segmentation
(``core/scope/validation.py``) does not always tell. A lung mask does: the air-like voxels inside the
body, less the airway, on a coarse grid (about 1.25 mm). A juxtapleural nodule is a dent in that
mask: it lies in the mask's morphological closing with a ball of the nodule's size, and lung
closes it above or below; a point beyond the pleura has a ball of non-lung around it, and a tube
along the lung (the aorta) is open in z. docs/DESIGN.md §12.

The mask needs the body outline: air that touches the image's in-plane border is outside the
body. A tight crop (the LIDC VOIs) has lung on its border and so no mask: the rule stays silent
there. Masks are cached by the image's content (a voxel every 5 mm in-plane, every slice, and the
geometry) with their distance map and lung field, so a second click on a CT costs the key and
local look-ups only.

A click reads the distance map and the lung field only in a box around the point (or the
outline), so it computes them there, on the box grown by the distance that decides them: the
values it reads are the whole CT's, without the whole CT's maps (1.5 s on a chest CT, 2 cores;
a click's boxes: tens of ms). The Slicer module builds the whole maps ahead of the first click
(core/scope/validation.prepare_lung_side); once built, boxes are cut from them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..geometry import ImageGeometry

__all__ = [
    "LungMask",
    "inside_lung_envelope",
    "lung_above_or_below",
    "lung_distance_mm",
    "lung_mask",
]

_CACHE: OrderedDict[tuple, LungMask | None] = OrderedDict()
_CACHE_SIZE = 4
FIELD_CLOSING_MM = 10.0  # the lung field's closing (lung_field); docs/experiments/vessel_field.py
# The cache key samples one voxel per KEY_STEP x KEY_STEP coarse blocks in-plane, on every
# other coarse slice (about 1 ms on a 512 x 512 x 133 CT instead of 4 with every slice).
KEY_STEP = 4
_BOXES_KEPT = 16  # a mask's local maps kept for repeated clicks (per kind and box)


@dataclass(frozen=True)
class LungMask:
    """The lung mask on the coarse grid: voxel (k, j, i) of the mask is the block of image
    voxels from (k, j, i) * ``stride_kji`` on."""

    mask_kji: np.ndarray  # bool
    stride_kji: tuple[int, int, int]
    spacing_kji: tuple[float, float, float]  # mm between coarse voxels
    _boxes: OrderedDict = field(default_factory=OrderedDict, compare=False, repr=False)

    @cached_property
    def field_kji(self) -> np.ndarray:
        """The lung field of core/scope/vessel.py (:func:`lung_field`)."""
        return lung_field(self, FIELD_CLOSING_MM)

    @cached_property
    def distance_kji(self) -> np.ndarray:
        """mm from each coarse voxel to the nearest lung voxel (0 inside), float16 (a hundredth
        of a mm at 30 mm): built once per CT (about 0.7 s), so that a click reads the closing
        test and the lung distance off it locally."""
        return _distance_to_mask(self.mask_kji, self.spacing_kji).astype(np.float16)

    def distance_box(self, lo, hi, exact_mm: float) -> np.ndarray:
        """:attr:`distance_kji` in the box ``[lo, hi)``, every value up to ``exact_mm`` (and a
        grid step more) the whole map's and every larger one larger than that. Without the
        whole map, computed on the box grown by that distance: a lung voxel farther from the
        box cannot be a voxel's nearest one within it."""
        if "distance_kji" in self.__dict__:
            return self.distance_kji[_slices(lo, hi)]
        return self._local("distance", lo, hi, exact_mm)

    def distance_at(self, kji, exact_mm: float) -> float:
        """:attr:`distance_kji` at one voxel, as :meth:`distance_box` gives it: read off a box
        already computed when the value there lies below that box's exactness (a nearer lung
        voxel than the box's margin lies in it, so it is the whole map's), else computed."""
        kji = np.asarray(kji, dtype=int)
        if "distance_kji" not in self.__dict__:
            for (kind, lo, hi, mm), box in reversed(self._boxes.items()):
                if kind == "distance" and np.all((kji >= lo) & (kji < hi)):
                    value = box[tuple(kji - np.asarray(lo))]
                    if value < mm:
                        return float(value)
        return float(self.distance_box(kji, kji + 1, exact_mm)[0, 0, 0])

    def field_box(self, lo, hi) -> np.ndarray:
        """:attr:`field_kji` in the box ``[lo, hi)``, the same values (:func:`lung_field` on the
        box's whole slices for the holes, on the box grown by twice the closing radius for the
        closing)."""
        if "field_kji" in self.__dict__:
            return self.field_kji[_slices(lo, hi)]
        return self._local("field", lo, hi, FIELD_CLOSING_MM)

    def _local(self, kind: str, lo, hi, mm: float) -> np.ndarray:
        lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
        key = (kind, lo, hi, float(mm))
        if key not in self._boxes:
            build = _local_distance if kind == "distance" else _local_field
            self._boxes[key] = build(self, np.asarray(lo), np.asarray(hi), mm)
            while len(self._boxes) > _BOXES_KEPT:
                self._boxes.popitem(last=False)
        self._boxes.move_to_end(key)
        return self._boxes[key]

    def coarse_index(self, geometry: ImageGeometry, point_lps) -> np.ndarray:
        """Continuous (k, j, i) of a world LPS point on the coarse grid."""
        ijk = np.asarray(geometry.lps_to_index(np.asarray(point_lps, dtype=float)), dtype=float)
        stride = np.asarray(self.stride_kji, dtype=float)
        return (ijk[::-1] - (stride - 1.0) / 2.0) / stride


def _slices(lo, hi) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _grown(lungs: LungMask, lo: np.ndarray, hi: np.ndarray, mm: float):
    """The box grown by ``mm`` and one grid step more per axis, inside the grid."""
    spacing = np.asarray(lungs.spacing_kji, dtype=float)
    grow = np.ceil(mm / spacing).astype(int) + int(np.ceil(spacing.max() / spacing.min()))
    return np.maximum(lo - grow, 0), np.minimum(hi + grow, lungs.mask_kji.shape)


def _local_distance(lungs: LungMask, lo: np.ndarray, hi: np.ndarray, mm: float) -> np.ndarray:
    glo, ghi = _grown(lungs, lo, hi, mm)
    distance = _distance_to_mask(lungs.mask_kji[_slices(glo, ghi)], lungs.spacing_kji)
    return distance[_slices(lo - glo, hi - glo)].astype(np.float16)


def _local_field(lungs: LungMask, lo: np.ndarray, hi: np.ndarray, closing_mm: float) -> np.ndarray:
    """:func:`lung_field` in a box: the holes per slice (whole slices), the closing from the
    ball centres clear of the lung within the closing radius of the box."""
    slices = lungs.mask_kji[lo[0] : hi[0]]
    field = np.stack([ndimage.binary_fill_holes(s) for s in slices])[
        :, lo[1] : hi[1], lo[2] : hi[2]
    ]
    if closing_mm > 0:
        glo, ghi = _grown(lungs, lo, hi, closing_mm)
        clear = lungs.distance_box(glo, ghi, closing_mm) > closing_mm
        far = _distance_to_mask(clear, lungs.spacing_kji)[_slices(lo - glo, hi - glo)]
        field |= far > closing_mm
    return field


def lung_field(lungs: LungMask, closing_mm: float) -> np.ndarray:
    """The lung field: the mask with each slice's holes (vessels, nodules) filled and, with
    ``closing_mm`` > 0, its closing with a ball of that radius (what no such ball clear of the
    lung reaches: a vessel up to twice as thick that joins the mediastinum within the slice);
    the chest wall and the mediastinum stay outside (core/scope/vessel.py)."""
    field = np.stack([ndimage.binary_fill_holes(s) for s in lungs.mask_kji])
    if closing_mm > 0:
        clear = lungs.distance_kji > closing_mm  # centres of balls clear of the lung
        field |= _distance_to_mask(clear, lungs.spacing_kji) > closing_mm
    return field


def _strides(geometry: ImageGeometry, step_mm: float) -> tuple[int, int, int]:
    spacing_kji = np.asarray(geometry.spacing, dtype=float)[::-1]
    return tuple(int(s) for s in np.maximum(1, np.rint(step_mm / spacing_kji)))


def _block_max(image_zyx: np.ndarray, stride: tuple[int, int, int]) -> np.ndarray:
    """The highest value of each block of ``stride`` voxels (the far edge's partial blocks
    dropped): a coarse voxel is air only if its whole block is, so thin walls (the trachea's
    against the lung) survive the coarse grid."""
    a = np.asarray(image_zyx)
    n = [size // st for size, st in zip(a.shape, stride, strict=True)]
    out = None
    for dk, dj, di in itertools.product(*(range(st) for st in stride)):
        part = a[dk : n[0] * stride[0] : stride[0], dj : n[1] * stride[1] : stride[1]]
        part = part[:, :, di : n[2] * stride[2] : stride[2]]
        out = part.copy() if out is None else np.maximum(out, part, out=out)
    return out


def _key(sampled: np.ndarray, geometry: ImageGeometry, settings: tuple) -> tuple:
    digest = hashlib.blake2b(np.ascontiguousarray(sampled).tobytes(), digest_size=16).hexdigest()
    shape = (sampled.shape, str(sampled.dtype))
    return (shape, geometry.origin, geometry.spacing, geometry.direction, settings, digest)


def _outside_body(air: np.ndarray) -> np.ndarray:
    """Air-like voxels connected to the in-plane border (the first and last slices do not
    count: a chest CT cuts through the lungs there)."""
    image = sitk.GetImageFromArray(air.astype(np.uint8))
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(image))
    faces = (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    touching = np.zeros(int(labels.max()) + 1, dtype=bool)
    touching[np.concatenate([f.ravel() for f in faces])] = True
    touching[0] = False
    return touching[labels]


def _slice_components(mask: np.ndarray) -> np.ndarray:
    """Labels of each axial slice's own connected components (an empty slice between every
    two keeps one 3D labelling from joining them)."""
    spaced = np.zeros((2 * mask.shape[0], *mask.shape[1:]), dtype=np.uint8)
    spaced[::2] = mask
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(spaced))
    return sitk.GetArrayFromImage(labels)[::2]


def _without_airway(
    lungs: np.ndarray, body: np.ndarray, spacing_kji, max_area_mm2: float, midline_mm: float
) -> np.ndarray:
    """The lungs less the trachea, main bronchi and oesophagus: per slice, air components
    smaller than ``max_area_mm2`` near the body's midline (lung apices and bases lie lateral).
    Why: with the airway in the mask, the mediastinum around it would count as lung."""
    labels = _slice_components(lungs)
    k, _, i = np.nonzero(lungs)
    label = labels[lungs]
    if label.size == 0:
        return lungs
    count = np.bincount(label)
    ids = np.flatnonzero(count)
    k_mean = np.rint(np.bincount(label, weights=k)[ids] / count[ids]).astype(int)
    i_mean = np.bincount(label, weights=i)[ids] / count[ids]
    body_columns = body.sum(1)  # (k, i): body voxels per column
    columns = np.arange(lungs.shape[2], dtype=float)
    midline = (body_columns * columns).sum(1) / np.maximum(body_columns.sum(1), 1)  # per slice
    offset_mm = np.abs(i_mean - midline[k_mean]) * spacing_kji[2]
    area_mm2 = count[ids] * float(spacing_kji[1] * spacing_kji[2])
    airway = np.zeros(int(labels.max()) + 1, dtype=bool)
    airway[ids[(area_mm2 < max_area_mm2) & (offset_mm < midline_mm)]] = True
    return lungs & ~airway[labels]


def _large_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    image = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))
    kept = sitk.RelabelComponent(image, minimumObjectSize=max(1, int(min_voxels)))
    return sitk.GetArrayFromImage(kept) > 0


def lung_mask(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    air_hu: float = -400.0,
    step_mm: float = 1.25,
    min_lung_ml: float = 100.0,
    airway_mm2: float = 600.0,
    midline_mm: float = 40.0,
) -> LungMask | None:
    """The lung mask of a whole-chest CT, or ``None`` when the image shows no body outline (a
    crop) or no lung of at least ``min_lung_ml``. Cached by the coarse voxels' content."""
    stride = _strides(geometry, step_mm)
    # The key samples a voxel every few blocks (cheap on every click); the mask uses them all.
    step = (2 * stride[0], KEY_STEP * stride[1], KEY_STEP * stride[2])
    sampled = np.asarray(image_zyx)[:: step[0], :: step[1], :: step[2]]
    key = _key(sampled, geometry, (air_hu, step_mm, min_lung_ml, airway_mm2, midline_mm))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    spacing = tuple(float(s) for s in np.asarray(geometry.spacing, dtype=float)[::-1] * stride)
    result = None
    coarse = _block_max(image_zyx, stride)
    if min(coarse.shape) >= 3:
        air = coarse < air_hu
        outside = _outside_body(air)
        lungs = _large_components(air & ~outside, min_lung_ml * 1000.0 / float(np.prod(spacing)))
        lungs = _without_airway(lungs, ~outside, spacing, airway_mm2, midline_mm)
        if lungs.any():
            result = LungMask(lungs, stride, spacing)
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def _local_box(lungs: LungMask, centre_kji: np.ndarray, half_mm: float):
    half = np.ceil(half_mm / np.asarray(lungs.spacing_kji)).astype(int) + 1
    c = np.rint(centre_kji).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, lungs.mask_kji.shape)
    return lo, hi


def _offsets_mm(lo, hi, centre_kji, spacing_kji) -> np.ndarray:
    axes = [
        (np.arange(a, b) - c) * s
        for a, b, c, s in zip(lo, hi, centre_kji, spacing_kji, strict=True)
    ]
    kk, jj, ii = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(kk**2 + jj**2 + ii**2)


def _distance_to_mask(mask: np.ndarray, spacing_kji) -> np.ndarray:
    """mm from each voxel to the nearest mask voxel (0 inside); inf for an empty mask."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))
    signed = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.maximum(sitk.GetArrayFromImage(signed), 0.0)


def inside_lung_envelope(
    lungs: LungMask, geometry: ImageGeometry, point_lps, radius_mm: float
) -> bool:
    """Whether the point lies in the lung mask's closing with a ball of ``radius_mm``: no ball
    of that radius holding the point stays clear of the lung, i.e. no ball centre within the
    radius of the point lies farther than the radius from the lung (read off the CT's distance
    map, so a click looks at the ball around the point only)."""
    centre = lungs.coarse_index(geometry, point_lps)
    lo, hi = _local_box(lungs, centre, radius_mm)
    if np.any(hi <= lo):
        return True  # the point lies off the image: no verdict against it
    near = _offsets_mm(lo, hi, centre, lungs.spacing_kji) <= radius_mm
    clear = lungs.distance_box(lo, hi, radius_mm) > radius_mm  # ball centres off the lung
    return not bool(np.any(clear & near))


def lung_distance_mm(lungs: LungMask, geometry: ImageGeometry, point_lps, limit_mm: float) -> float:
    """mm from the point to the lung mask (0 inside it; to the coarse grid's precision), capped
    at ``limit_mm``; ``limit_mm`` off the image."""
    kji = np.rint(lungs.coarse_index(geometry, point_lps)).astype(int)
    if not np.all((kji >= 0) & (kji < lungs.mask_kji.shape)):
        return float(limit_mm)
    return float(min(limit_mm, lungs.distance_at(kji, limit_mm)))


def lung_above_or_below(
    lungs: LungMask, geometry: ImageGeometry, point_lps, reach_mm: float, radius_mm: float
) -> bool:
    """Whether lung lies within ``reach_mm`` straight above or below the point (in a column of
    ``radius_mm``). A nodule is compact, so lung closes it in z even against the pleura; a tube
    along z (the descending aorta, the vena cava) or the mediastinum does not."""
    centre = lungs.coarse_index(geometry, point_lps)
    sk, sj, si = lungs.spacing_kji
    reach = int(np.ceil(reach_mm / sk))
    rj, ri = int(np.ceil(radius_mm / sj)), int(np.ceil(radius_mm / si))
    k, j, i = (int(v) for v in np.rint(centre))
    shape = lungs.mask_kji.shape
    jj, ii = slice(max(j - rj, 0), j + rj + 1), slice(max(i - ri, 0), i + ri + 1)
    below = lungs.mask_kji[max(k - reach, 0) : max(k, 0) + 1, jj, ii]
    above = lungs.mask_kji[min(k, shape[0]) : min(k + reach + 1, shape[0]), jj, ii]
    return bool(below.any() or above.any())
