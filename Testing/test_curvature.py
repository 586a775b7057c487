"""core/scope/curvature.py: a ball reads as a blob, a tube and a plate do not, at every size the
vessel check meets, on an anisotropic CT grid, and a point near the edge of the CT is no error."""

from __future__ import annotations

import numpy as np
import pytest

from NoduleMalignancyLib.core.scope.curvature import blob_figures, tube_axis

SPACING = np.array([1.25, 0.7, 0.7])
SHAPE = (64, 110, 110)


def _grid():
    axes = [(np.arange(n) - n // 2) * s for n, s in zip(SHAPE, SPACING, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def _ct(inside: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 25, SHAPE)
    return (np.where(inside, 40, -850) + noise).astype(np.int16)


@pytest.mark.parametrize("radius_mm", [2.0, 3.5, 6.0, 10.0])
def test_a_ball_is_a_blob_and_a_tube_of_its_calibre_is_not(radius_mm):
    z, y, x = _grid()
    centre = np.array(SHAPE) // 2
    ball = blob_figures(_ct(z**2 + y**2 + x**2 < radius_mm**2), SPACING, centre)
    tube = blob_figures(_ct(y**2 + x**2 < radius_mm**2), SPACING, centre)
    assert ball["blob_ratio"] > 0.7 and ball["blob_strength"] > 150
    assert tube["blob_strength"] < 0.1 * ball["blob_strength"]
    if radius_mm <= 3.5:  # lung vessels; inside a wider tube every curvature is noise
        assert tube["blob_ratio"] < 0.3


def test_the_scale_follows_the_size():
    z, y, x = _grid()
    centre = np.array(SHAPE) // 2
    small = blob_figures(_ct(z**2 + y**2 + x**2 < 2.0**2), SPACING, centre)
    large = blob_figures(_ct(z**2 + y**2 + x**2 < 10.0**2), SPACING, centre)
    assert small["blob_sigma_mm"] < large["blob_sigma_mm"]


def test_a_plate_and_empty_lung_are_not_blobs():
    z, y, x = _grid()
    centre = np.array(SHAPE) // 2
    plate = blob_figures(_ct(np.abs(x) < 3.0), SPACING, centre)
    lung = blob_figures(_ct(np.zeros(SHAPE, bool)), SPACING, centre)
    assert plate["blob_ratio"] < 0.2
    assert lung["blob_strength"] < 30


def test_a_centre_at_the_edge_of_the_ct_is_measured():
    z, y, x = _grid()
    ct = _ct((z + 37.5) ** 2 + y**2 + x**2 < 4.0**2)
    figures = blob_figures(ct, SPACING, (2, SHAPE[1] // 2, SHAPE[2] // 2))
    assert np.isfinite(list(figures.values())).all()
    assert figures["blob_strength"] > 50


def test_the_tube_axis_runs_along_the_tube():
    """tube_axis: the least-curvature direction at a tube's centre is its axis (mm, (k, j, i)),
    an oblique one on the anisotropic grid included, at a scale of its calibre."""
    z, y, x = _grid()
    centre = np.array(SHAPE) // 2
    for direction in (np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 1.0]) / np.sqrt(2.0)):
        offsets = np.stack([z, y, x], -1)
        across = offsets - (offsets @ direction)[..., None] * direction
        axis, scale = tube_axis(_ct((across**2).sum(-1) < 2.5**2), SPACING, centre)
        assert abs(axis @ direction) > 0.95, axis
        assert 1.0 <= scale <= 3.0
