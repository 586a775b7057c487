"""Gate health figures react to a collapsed and to a healthy gate (constructed maps)."""

from __future__ import annotations

import numpy as np
import pytest

from NoduleMalignancyLib.core.model.gates import gate_health, valid_cells


def _gates(fine, medium, coarse):
    return [np.asarray(g, dtype=float)[None] for g in (fine, medium, coarse)]


def test_uniform_gates_spread_everywhere_and_share_by_cell_count():
    valid = np.ones((32, 48, 48))
    shapes = [(16, 24, 24), (8, 12, 12), (4, 6, 6)]
    health = gate_health(_gates(*(np.full(s, 0.5) for s in shapes)), valid)["mean"]
    cells = [np.prod(s) for s in shapes]
    for (name, figures), n in zip(health.items(), cells, strict=True):
        assert figures["spread"] == pytest.approx(1.0)
        assert figures["mean_gate"] == pytest.approx(0.5)
        assert figures["mass_share"] == pytest.approx(n / sum(cells)), name


def test_collapsed_gates_are_seen():
    valid = np.ones((32, 48, 48))
    fine = np.full((16, 24, 24), 1e-4)  # closed everywhere
    medium = np.full((8, 12, 12), 1e-4)
    medium[4, 6, 6] = 1.0  # one cell carries the scale
    coarse = np.ones((4, 6, 6))  # open everywhere: plain averaging
    health = gate_health(_gates(fine, medium, coarse), valid)["mean"]
    assert health["medium"]["spread"] < 2 / medium.size  # about one cell of 1152
    assert health["coarse"]["spread"] == pytest.approx(1.0)
    assert health["coarse"]["mass_share"] > 0.9 and health["fine"]["mass_share"] < 0.05
    assert sum(h["mass_share"] for h in health.values()) == pytest.approx(1.0)


def test_only_valid_cells_count():
    valid = np.zeros((32, 48, 48))
    valid[:, :, :24] = 1.0  # the crop covers half of the VOI
    assert valid_cells(valid, (4, 6, 6)).sum() == 4 * 6 * 3
    coarse = np.zeros((4, 6, 6))
    coarse[:, :, :3] = 0.8  # uniform on the valid half, closed (and ignored) outside
    fine, medium = np.full((16, 24, 24), 0.8), np.full((8, 12, 12), 0.8)
    health = gate_health(_gates(fine, medium, coarse), valid)
    assert health["mean"]["coarse"]["spread"] == pytest.approx(1.0)
    assert len(health["folds"]) == 1
