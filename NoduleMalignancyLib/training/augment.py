"""Batched torch augmentation from the cached canvas onto the VOI grid.

One affine per sample (flips, rotation about z, isotropic scale, shift in mm) maps VOI voxel
centres to canvas positions; HU, validity and the consensus mask are read there with trilinear
``grid_sample``. Validity is re-binarised (>= 0.5, the same "half the interpolation weight came
from real data" rule as :func:`~NoduleMalignancyLib.core.nodule.voi.sample_voi`) and invalid HU become
``outside_hu``, so augmented inputs look like what inference produces. Window jitter moves and
widens the HU windows when the channels are made. At evaluation the VOI is the exact centre crop
of the canvas, which equals ``sample_voi`` on the same file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..core.config import VoiConfig


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all uniform; rotation in degrees about z)."""

    enabled: bool = True
    flip_x: bool = True
    flip_y: bool = True
    flip_z: bool = True
    rotate_deg: float = 180.0
    scale: tuple[float, float] = (0.8, 1.2)
    shift_mm: float = 2.5
    window_shift_hu: float = 30.0
    window_scale: float = 0.1
    # Shrink each side of the context crop (the validity box) by up to this many mm, never into
    # the nodule. The LIDC crops sit a fixed margin around the nodule, so without this the
    # network can read the nodule's edge off the crop's edge (and follow a crop that grows).
    context_shrink_mm: float = 0.0
    # Coarse dropout (the seed method's augmentation, issue #12): up to this many boxes per
    # sample, each side drawn from ``coarse_dropout_mm``, whose valid voxels become lung
    # (``coarse_dropout_hu``) and leave the segmentation target, so the label must survive a
    # missing part of the nodule or of its context and no single cell can carry it.
    coarse_dropout_holes: int = 0
    coarse_dropout_mm: tuple[float, float] = (3.0, 8.0)
    coarse_dropout_hu: float = -850.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        d = dict(d)
        for key in ("scale", "coarse_dropout_mm"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def random_params(
    n: int, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Draw the per-sample transform parameters (float64, CPU)."""

    def flip(on: bool) -> torch.Tensor:
        if not on:
            return torch.ones(n, dtype=torch.float64)
        return torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()

    shift = (torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1) * cfg.shift_mm
    extra = {}
    if cfg.context_shrink_mm > 0:  # drawn only when used: older runs keep their random stream
        extra["context_shrink"] = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    if cfg.coarse_dropout_holes > 0:  # per hole: kept?, centre (z, y, x), sides (z, y, x)
        holes = (n, cfg.coarse_dropout_holes, 7)
        extra["coarse_dropout"] = torch.rand(holes, generator=generator, dtype=torch.float64)
    return extra | {
        "flip_zyx": torch.stack([flip(cfg.flip_z), flip(cfg.flip_y), flip(cfg.flip_x)], 1),
        "angle": torch.deg2rad(_uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator)),
        # Log-uniform, so zooming in and out are equally likely.
        "scale": torch.exp(_uniform(n, math.log(cfg.scale[0]), math.log(cfg.scale[1]), generator)),
        "shift_zyx_mm": shift,
        "window_shift": _uniform(n, -cfg.window_shift_hu, cfg.window_shift_hu, generator),
        "window_scale": _uniform(n, 1 - cfg.window_scale, 1 + cfg.window_scale, generator),
    }


def identity_params(n: int) -> dict[str, torch.Tensor]:
    """Parameters of the identity transform (for tests and the eval path through the warp)."""
    z = torch.zeros(n, dtype=torch.float64)
    return {
        "flip_zyx": torch.ones(n, 3, dtype=torch.float64),
        "angle": z.clone(),
        "scale": torch.ones(n, dtype=torch.float64),
        "shift_zyx_mm": torch.zeros(n, 3, dtype=torch.float64),
        "window_shift": z.clone(),
        "window_scale": torch.ones(n, dtype=torch.float64),
    }


def _norm_to_mm(shape_zyx, spacing_zyx) -> torch.Tensor:
    """4x4 (x, y, z, 1) map from align_corners=True normalised coords to mm from the centre."""
    m = torch.eye(4, dtype=torch.float64)
    for axis_xyz, (n, s) in enumerate(zip(shape_zyx[::-1], spacing_zyx[::-1], strict=True)):
        m[axis_xyz, axis_xyz] = (n - 1) / 2.0 * s
    return m


def affine_theta(params: dict[str, torch.Tensor], voi: VoiConfig, canvas_zyx) -> torch.Tensor:
    """(B, 3, 4) ``affine_grid`` matrices: VOI normalised coords -> canvas normalised coords.

    In mm about the nodule centre: p_canvas = R_z(angle) * scale * Flip * p_voi + shift.
    """
    n = params["angle"].shape[0]
    out_to_mm = _norm_to_mm(voi.shape_zyx, voi.spacing_zyx)
    mm_to_in = torch.linalg.inv(_norm_to_mm(tuple(canvas_zyx), voi.spacing_zyx))
    c, s = torch.cos(params["angle"]), torch.sin(params["angle"])
    t = torch.zeros(n, 4, 4, dtype=torch.float64)
    # (x, y) in-plane rotation; z untouched.
    t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = c, -s, s, c
    t[:, 2, 2] = 1.0
    t[:, 3, 3] = 1.0
    flips = torch.diag_embed(
        torch.cat([params["flip_zyx"].flip(1), torch.ones(n, 1, dtype=torch.float64)], 1)
    )
    scale = torch.diag_embed(
        torch.cat([params["scale"][:, None].expand(n, 3), torch.ones(n, 1, dtype=torch.float64)], 1)
    )
    t = t @ scale @ flips
    t[:, :3, 3] = params["shift_zyx_mm"].flip(1)
    full = mm_to_in @ t @ out_to_mm
    return full[:, :3, :]


def warp(
    hu: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    theta: torch.Tensor,
    voi: VoiConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resample canvas (B, D, H, W) arrays onto the VOI grid with per-sample affines.

    Returns HU (``outside_hu`` where invalid), binary validity and the soft mask, (B, d, h, w).
    """
    b = hu.shape[0]
    size = (b, 1, *voi.shape_zyx)
    grid = F.affine_grid(theta.to(torch.float32), size, align_corners=True)
    stack = torch.stack(
        [hu.float() - voi.outside_hu, valid.float(), mask.float()], dim=1
    )  # zero padding = air / invalid / background
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    valid_out = (out[:, 1] >= 0.5).float()
    hu_out = torch.where(valid_out > 0, out[:, 0] + voi.outside_hu, voi.outside_hu)
    mask_out = out[:, 2].clamp(0.0, 1.0)
    return hu_out, valid_out, mask_out


def shrink_context(
    hu: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    fractions: torch.Tensor,
    max_mm: float,
    voi: VoiConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each side of every sample's validity box by ``fractions`` (B, 6) x ``max_mm``.

    Sides order: z-, z+, y-, y+, x-, x+. The box never shrinks past the nodule's (mask >= 0.5)
    bounding box. Cut voxels become invalid with ``outside_hu``, as outside a crop at inference.
    """
    hu, valid = hu.clone(), valid.clone()
    for b in range(valid.shape[0]):
        inside = valid[b] > 0.5
        if not inside.any():
            continue
        nodule = mask[b] >= 0.5
        keep = torch.ones_like(inside)
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            occupied = torch.nonzero(inside.any(dim=others)).flatten()
            lo, hi = int(occupied.min()), int(occupied.max())
            cut = (fractions[b, 2 * axis : 2 * axis + 2] * max_mm / voi.spacing_zyx[axis]).long()
            new_lo, new_hi = lo + int(cut[0]), hi - int(cut[1])
            if nodule.any():
                span = torch.nonzero(nodule.any(dim=others)).flatten()
                new_lo, new_hi = min(new_lo, int(span.min())), max(new_hi, int(span.max()))
            index = torch.arange(valid.shape[1 + axis])
            line = (index >= new_lo) & (index <= new_hi)
            keep &= line.view([-1 if a == axis else 1 for a in range(3)])
        valid[b] = valid[b] * keep
        hu[b] = torch.where(keep, hu[b], torch.full_like(hu[b], voi.outside_hu))
    return hu, valid


def coarse_dropout(
    hu: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    draws: torch.Tensor,
    cfg: AugmentConfig,
    voi: VoiConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill random boxes of each sample with lung and take them out of the segmentation target.

    ``draws`` (B, holes, 7) uniform in [0, 1): a hole is used when its first value is below 0.5
    (so a sample has none to all ``coarse_dropout_holes``), centred anywhere in the VOI, each side
    in ``coarse_dropout_mm``. Only valid voxels change (outside the crop stays outside).
    """
    lo, hi = cfg.coarse_dropout_mm
    boxes = torch.zeros_like(valid, dtype=torch.bool)
    axes = [
        torch.arange(n, dtype=torch.float64) * s
        for n, s in zip(voi.shape_zyx, voi.spacing_zyx, strict=True)
    ]
    for h in range(draws.shape[1]):
        d = draws[:, h]
        inside = (d[:, 0] < 0.5).view(-1, 1, 1, 1)
        for axis, coords in enumerate(axes):
            centre = d[:, 1 + axis] * (coords[-1] + voi.spacing_zyx[axis])
            half = (lo + (hi - lo) * d[:, 4 + axis]) / 2.0
            near = (coords[None, :] - centre[:, None]).abs() <= half[:, None]
            inside = inside & near.view([-1] + [len(coords) if a == axis else 1 for a in range(3)])
        boxes |= inside.to(boxes.device)
    boxes &= valid > 0.5
    hu = torch.where(boxes, torch.full_like(hu, cfg.coarse_dropout_hu), hu)
    return hu, torch.where(boxes, torch.zeros_like(mask), mask)


def center_crop(arr: torch.Tensor, voi_zyx, canvas_zyx=None) -> torch.Tensor:
    """Exact centre crop of (B, D, H, W) canvas arrays to the VOI shape."""
    canvas_zyx = tuple(arr.shape[-3:]) if canvas_zyx is None else tuple(canvas_zyx)
    lo = [(c - v) // 2 for c, v in zip(canvas_zyx, voi_zyx, strict=True)]
    return arr[
        ...,
        lo[0] : lo[0] + voi_zyx[0],
        lo[1] : lo[1] + voi_zyx[1],
        lo[2] : lo[2] + voi_zyx[2],
    ]


def make_channels(
    hu: torch.Tensor,
    valid: torch.Tensor,
    windows,
    window_shift: torch.Tensor | None = None,
    window_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, C, d, h, w) input: one [0, 1] channel per (jittered) HU window, then validity.

    Without jitter this is :func:`~NoduleMalignancyLib.core.nodule.voi.windows_to_channels` in torch.
    """
    b = hu.shape[0]
    shape = (b, 1, 1, 1)
    chans = []
    for lo, hi in windows:
        lo_t = torch.full(shape, float(lo), dtype=torch.float64)
        hi_t = torch.full(shape, float(hi), dtype=torch.float64)
        if window_shift is not None or window_scale is not None:
            centre, width = (lo_t + hi_t) / 2, hi_t - lo_t
            if window_shift is not None:
                centre = centre + window_shift.view(shape)
            if window_scale is not None:
                width = width * window_scale.view(shape)
            lo_t, hi_t = centre - width / 2, centre + width / 2
        lo_t, hi_t = lo_t.to(hu.device, torch.float32), hi_t.to(hu.device, torch.float32)
        chans.append(((hu - lo_t) / (hi_t - lo_t)).clamp(0.0, 1.0))
    chans.append(valid.float())
    return torch.stack(chans, dim=1)


def make_batch(
    hu: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    voi: VoiConfig,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    train: bool = True,
    params: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network input (B, C, d, h, w), seg target and validity (B, 1, d, h, w) from canvases.

    ``train`` with an enabled config: random transforms and window jitter; otherwise the exact
    centre crop, no jitter. ``params`` (one row per sample) are used instead of drawing them: a
    process training a shard of a batch takes its rows of the whole batch's draw.
    """
    if train and cfg is not None and cfg.enabled:
        p = params if params is not None else random_params(hu.shape[0], cfg, generator)
        theta = affine_theta(p, voi, hu.shape[-3:])
        h, v, m = warp(hu, valid, mask, theta, voi)
        if cfg.context_shrink_mm > 0:
            h, v = shrink_context(h, v, m, p["context_shrink"], cfg.context_shrink_mm, voi)
        if cfg.coarse_dropout_holes > 0:
            h, m = coarse_dropout(h, v, m, p["coarse_dropout"], cfg, voi)
        x = make_channels(h, v, voi.windows, p["window_shift"], p["window_scale"])
    else:
        h = center_crop(hu, voi.shape_zyx).float()
        v = center_crop(valid, voi.shape_zyx).float()
        m = center_crop(mask, voi.shape_zyx).float()
        x = make_channels(h, v, voi.windows)
    return x, m.unsqueeze(1), v.unsqueeze(1)


def max_reach_mm(voi: VoiConfig, cfg: AugmentConfig) -> tuple[float, float]:
    """Farthest canvas distance (z, in-plane radius) the transforms can reach, in mm."""
    half = [(n - 1) / 2 * s for n, s in zip(voi.shape_zyx, voi.spacing_zyx, strict=True)]
    smax = max(cfg.scale)
    return half[0] * smax + cfg.shift_mm, math.hypot(half[1], half[2]) * smax + cfg.shift_mm
