"""The prior CT registered to the current one: lungs first, rigid then affine, on coarse
volumes, with a residual that says whether the mapping can be trusted (docs/DESIGN.md §17).

Why this way: a nodule on the prior is found by re-segmenting at the mapped point with the same
model, and the re-centring of core/nodule/recentre.py settles on the nodule from a few mm away, so the
mapping needs to be good to a few mm inside the lungs, not everywhere. Hence: the lung masks of
core/scope/lung_mask.py give the start (their centroids aligned) and the region the metric looks at
(the current CT's lungs, grown by :data:`MASK_MARGIN_MM`); the images are block means on a grid
of about :data:`COARSE_MM` (cheap, and the lung's vessels survive); rigid, then affine, each at
two resolutions. A deformable stage is not run: the residual below says when the affine mapping
falls short, and that comparison is then flagged or refused rather than warped.

Two residuals, both on the current CT's lungs: the Dice of the two lung masks after the mapping
(the prior's mask mapped onto the current's grid) and the correlation of the coarse intensities
inside the current lungs (the vessels line up). On the development CTs under known transforms
(docs/experiments/prior_pairs.md) a registered pair gives a Dice of about 0.98 and a correlation
of about 0.92; its map shifted by 1, 3, 5 and 10 mm gives 0.97/0.85, 0.94/0.60, 0.91/0.46,
0.83/0.32. Hence: refused below a Dice of :data:`DICE_REFUSE` (about 8 mm off);
flagged below :data:`DICE_FLAG` (about 3 mm) or a correlation below :data:`CORRELATION_FLAG`.
The correlation only flags: a real pair (another dose, kernel, inspiration) correlates less
than a synthetic one, and no real pair was available here to set a refusal on it.

Frames: every point is world LPS; :attr:`Registration.current_to_prior` maps a point of the
current CT to the same anatomy on the prior (SimpleITK's fixed-to-moving transform).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..geometry import ImageGeometry
from ..scope.lung_mask import LungMask, lung_mask

__all__ = [
    "COARSE_MM",
    "CORRELATION_FLAG",
    "DICE_FLAG",
    "DICE_REFUSE",
    "Registration",
    "block_mean",
    "lung_correlation",
    "lung_dice",
    "register_prior",
]

COARSE_MM = 3.0  # the registration grid's step (block means)
MASK_MARGIN_MM = 10.0  # the metric's region: the current lungs grown by this (pleura, wall)
HU_RANGE = (-1000.0, 400.0)  # intensities clipped to the lung window before the metric
DICE_FLAG = 0.93  # lung-mask Dice below this: the comparison is flagged
DICE_REFUSE = 0.85  # below this: refused (no matching)
CORRELATION_FLAG = 0.5  # lung intensity correlation below this: flagged
SAMPLING = 0.1  # share of the masked coarse voxels the metric samples per iteration
SEED = 2026  # the metric's random sampling: the same answer on every run


@dataclass(frozen=True)
class Registration:
    """An affine map between the two CTs' world LPS frames and how well it fits."""

    matrix: np.ndarray  # 4x4, current LPS -> prior LPS (homogeneous)
    lung_dice: float  # the residual (module docstring)
    lung_dice_before: float  # with the lungs' centroids aligned only
    lung_correlation: float  # the second residual (module docstring)
    metric: float  # the final Mattes mutual information (lower is better)
    stages: tuple[str, ...]
    seconds: dict = field(default_factory=dict)

    def current_to_prior(self, point_lps) -> np.ndarray:
        p = np.asarray(point_lps, dtype=float)
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def prior_to_current(self, point_lps) -> np.ndarray:
        inverse = np.linalg.inv(self.matrix)
        p = np.asarray(point_lps, dtype=float)
        return p @ inverse[:3, :3].T + inverse[:3, 3]

    @property
    def verdict(self) -> str:
        """``good``, ``flagged`` or ``refused`` by the residuals (module docstring)."""
        if self.lung_dice < DICE_REFUSE:
            return "refused"
        poor = self.lung_dice < DICE_FLAG or self.lung_correlation < CORRELATION_FLAG
        return "flagged" if poor else "good"

    @property
    def verdict_reason(self) -> str:
        figures = (
            f"lung Dice {self.lung_dice:.3f} (flagged below {DICE_FLAG}, refused below "
            f"{DICE_REFUSE}), lung correlation {self.lung_correlation:.2f} (flagged below "
            f"{CORRELATION_FLAG})"
        )
        return {
            "good": f"registration residual good: {figures}",
            "flagged": f"registration residual poor, check the matches: {figures}",
            "refused": f"registration failed, nodules not compared: {figures}",
        }[self.verdict]

    def to_dict(self) -> dict:
        return {
            "method": "SimpleITK " + " + ".join(self.stages),
            "matrix_current_to_prior_lps": self.matrix.tolist(),
            "lung_dice": self.lung_dice,
            "lung_dice_before": self.lung_dice_before,
            "lung_dice_flag_below": DICE_FLAG,
            "lung_dice_refuse_below": DICE_REFUSE,
            "lung_correlation": self.lung_correlation,
            "lung_correlation_flag_below": CORRELATION_FLAG,
            "metric_mattes_mi": self.metric,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "seconds": dict(self.seconds),
        }


def _strides(geometry: ImageGeometry, step_mm: float) -> tuple[int, int, int]:
    spacing_kji = np.asarray(geometry.spacing, dtype=float)[::-1]
    return tuple(int(s) for s in np.maximum(1, np.rint(step_mm / spacing_kji)))


def _coarse_image(array_kji: np.ndarray, geometry: ImageGeometry, stride_kji) -> sitk.Image:
    """A SimpleITK image of a coarse array whose voxel (k, j, i) is the block of ``geometry``'s
    voxels from (k, j, i) * stride on (its centre: the block's centre)."""
    stride_ijk = np.asarray(stride_kji, dtype=float)[::-1]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetOrigin(tuple(map(float, geometry.index_to_lps((stride_ijk - 1.0) / 2.0))))
    image.SetSpacing(tuple(float(s) for s in np.asarray(geometry.spacing) * stride_ijk))
    image.SetDirection(geometry.direction)
    return image


def block_mean(image_zyx: np.ndarray, geometry: ImageGeometry, step_mm: float) -> sitk.Image:
    """The CT as block means on a grid of about ``step_mm`` (the far edge's partial blocks
    dropped), float32, clipped to :data:`HU_RANGE` (what lies outside the field of view, -2048
    on LIDC, reads as air)."""
    stride = _strides(geometry, step_mm)
    n = [size // st for size, st in zip(image_zyx.shape, stride, strict=True)]
    a = np.asarray(image_zyx)[: n[0] * stride[0], : n[1] * stride[1], : n[2] * stride[2]]
    blocks = a.reshape(n[0], stride[0], n[1], stride[1], n[2], stride[2])
    mean = blocks.astype(np.float32).mean(axis=(1, 3, 5))
    return _coarse_image(np.clip(mean, *HU_RANGE).astype(np.float32), geometry, stride)


def _mask_image(lungs: LungMask, geometry: ImageGeometry) -> sitk.Image:
    return _coarse_image(lungs.mask_kji.astype(np.uint8), geometry, lungs.stride_kji)


def lung_dice(fixed_mask: sitk.Image, moving_mask: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the fixed lung mask and the moving one mapped onto its grid by ``transform``
    (fixed -> moving points, nearest neighbour)."""
    mapped = sitk.Resample(moving_mask, fixed_mask, transform, sitk.sitkNearestNeighbor, 0)
    a = sitk.GetArrayViewFromImage(fixed_mask) > 0
    b = sitk.GetArrayViewFromImage(mapped) > 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 0.0


def lung_correlation(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, lungs: sitk.Image
) -> float:
    """Pearson correlation of the coarse intensities inside the fixed CT's lungs after the
    moving CT is mapped onto its grid: the vessels' alignment, a few mm's misregistration
    lowers it."""
    mapped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, HU_RANGE[0])
    inside = (
        sitk.GetArrayViewFromImage(
            sitk.Resample(lungs, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        )
        > 0
    )
    a = sitk.GetArrayViewFromImage(fixed)[inside]
    b = sitk.GetArrayViewFromImage(mapped)[inside]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _method(fixed_mask: sitk.Image, shrink=(2, 1)) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING, SEED)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([1.0 if f > 1 else 0.0 for f in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=0.01, numberOfIterations=100, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _metric_mask(lungs: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """The current lungs grown by :data:`MASK_MARGIN_MM`, on the registration grid."""
    on_grid = sitk.Resample(lungs, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    radius = [max(1, int(round(MASK_MARGIN_MM / s))) for s in reference.GetSpacing()]
    return sitk.BinaryDilate(on_grid > 0, radius)


def _matrix(transform: sitk.Transform) -> np.ndarray:
    """4x4 of a (composite of) matrix-offset transform(s), via three axis points and origin."""
    points = np.vstack([np.zeros(3), np.eye(3) * 100.0])
    mapped = np.array([transform.TransformPoint(tuple(map(float, p))) for p in points])
    m = np.eye(4)
    m[:3, 3] = mapped[0]
    m[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
    return m


def register_prior(
    current_zyx: np.ndarray,
    current: ImageGeometry,
    prior_zyx: np.ndarray,
    prior: ImageGeometry,
) -> Registration:
    """The prior CT registered to the current one (module docstring). Raises ``ValueError``
    when either CT has no lung mask (not a whole chest: nothing to register on)."""
    seconds = {}
    t = time.perf_counter()
    lungs_current = lung_mask(current_zyx, current)
    lungs_prior = lung_mask(prior_zyx, prior)
    missing = [n for n, m in (("current", lungs_current), ("prior", lungs_prior)) if m is None]
    if missing:
        raise ValueError(
            f"no lung mask on the {' and '.join(missing)} CT: registration needs whole-chest CTs"
        )
    fixed_mask = _mask_image(lungs_current, current)
    moving_mask = _mask_image(lungs_prior, prior)
    seconds["lung_masks"] = time.perf_counter() - t

    t = time.perf_counter()
    fixed = block_mean(current_zyx, current, COARSE_MM)
    moving = block_mean(prior_zyx, prior, COARSE_MM)
    metric_mask = _metric_mask(fixed_mask, fixed)
    seconds["coarse_volumes"] = time.perf_counter() - t

    # Lungs first: the lung masks' centroids aligned (a rigid transform about them).
    t = time.perf_counter()
    rigid = sitk.CenteredTransformInitializer(
        sitk.Cast(fixed_mask, sitk.sitkFloat32),
        sitk.Cast(moving_mask, sitk.sitkFloat32),
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    dice_before = lung_dice(fixed_mask, moving_mask, rigid)
    method = _method(metric_mask)
    method.SetInitialTransform(rigid, inPlace=True)
    method.Execute(fixed, moving)
    seconds["rigid"] = time.perf_counter() - t

    t = time.perf_counter()
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    rigid_metric = float(method.GetMetricValue())
    method = _method(metric_mask)
    method.SetInitialTransform(affine, inPlace=True)
    method.Execute(fixed, moving)
    affine_metric = float(method.GetMetricValue())
    seconds["affine"] = time.perf_counter() - t

    # The affine stage is kept where it improves the residual (it has twice the freedom to
    # go astray on a pair that a rigid map already fits).
    t = time.perf_counter()
    stages = ("lung centroids", "rigid (Euler3D)")
    rigid_residual = (
        lung_dice(fixed_mask, moving_mask, rigid),
        lung_correlation(fixed, moving, rigid, fixed_mask),
    )
    affine_residual = (
        lung_dice(fixed_mask, moving_mask, affine),
        lung_correlation(fixed, moving, affine, fixed_mask),
    )
    if affine_residual[1] >= rigid_residual[1]:
        transform, residual, metric = affine, affine_residual, affine_metric
        stages += ("affine",)
    else:
        transform, residual, metric = rigid, rigid_residual, rigid_metric
        stages += ("affine (not kept: a worse residual than the rigid stage's)",)
    seconds["residual"] = time.perf_counter() - t
    return Registration(
        _matrix(transform), *residual[:1], dice_before, residual[1], metric, stages, seconds
    )
