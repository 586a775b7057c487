"""A tiny randomly initialised ensemble for tests (never shipped as "the model")."""

from __future__ import annotations

from pathlib import Path

import torch

from NoduleMalignancyLib.core.config import NetworkConfig, VoiConfig
from NoduleMalignancyLib.core.ensemble import save_ensemble
from NoduleMalignancyLib.core.network import build_network

TINY_NETWORK = NetworkConfig(
    widths=(4, 8, 8, 8),
    pyramid_channels=8,
    pyramid_layers=1,
    groups=2,
    decoder_widths=(4, 4, 8),
)


def make_tiny_ensemble(
    directory: Path,
    k: int = 2,
    seed: int = 0,
    fusion: dict | None = None,
):
    """Write a K-fold random ensemble with a real manifest and sha256 to ``directory``."""
    torch.manual_seed(seed)
    models = [build_network(TINY_NETWORK) for _ in range(k)]
    return save_ensemble(
        models,
        directory,
        "test-random",
        VoiConfig(),
        TINY_NETWORK,
        fusion=fusion,
    )
