"""A similar-nodule index for the tiny random ensemble, naming real LIDC VOIs (tests only).

Why: the shipped index answers for the shipped weights only (bound by digest), and the tests run
the tiny random ensemble; an index of random features under real LIDC names gives its results
neighbours whose thumbnails the data folder can render. The names and ratings are fixed here;
which of them a query finds depends on the random features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Real LIDC VOIs (lidc_vois/image/<name>.nii.gz) with made-up ratings: 4 of 8 above 3.
NAMES = (
    "LIDC-IDRI-0001_R_1",
    "LIDC-IDRI-0003_R_2",
    "LIDC-IDRI-0003_R_3",
    "LIDC-IDRI-0003_R_4",
    "LIDC-IDRI-0005_R_2",
    "LIDC-IDRI-0241_R_4",
    "LIDC-IDRI-0385_R_1",
    "LIDC-IDRI-0434_R_1",
)
MALIGNANCY = (4.75, 4.0, 3.25, 3.5, 2.75, 2.5, 1.5, 3.0)
DIAMETER_MM = (23.4, 21.5, 8.8, 12.8, 7.9, 9.2, 10.9, 11.4)


def feature_count() -> int:
    """The tiny network's gate-pooled feature count (network.pooled_features)."""
    import torch

    from NoduleMalignancyLib.core.config import TINY_NETWORK
    from NoduleMalignancyLib.core.model.network import build_network

    model = build_network(TINY_NETWORK).eval()
    with torch.no_grad():
        out = model(torch.randn(1, TINY_NETWORK.in_channels, 16, 16, 16), with_seg=False)
    return int(out["bag_features"].shape[1])


def index_for(folds: int, weights_sha256: str = "", seed: int = 0):
    """A :class:`SimilarIndex` of :data:`NAMES` with random features for ``folds`` folds."""
    from NoduleMalignancyLib.core.config import ATTRIBUTES
    from NoduleMalignancyLib.core.model.similar import SimilarIndex

    rng = np.random.default_rng(seed)
    m = len(NAMES)
    targets = rng.uniform(0, 1, (m, len(ATTRIBUTES)))
    targets[:, ATTRIBUTES.index("malignancy")] = (np.asarray(MALIGNANCY) - 1) / 4
    return SimilarIndex(
        features=rng.normal(size=(folds, m, feature_count())).astype(np.float32),
        patient_id=np.array([n.split("_R_")[0] for n in NAMES]),
        nodule=np.array(NAMES),
        diameter_mm=np.asarray(DIAMETER_MM, np.float32),
        malignancy_mean=np.asarray(MALIGNANCY, np.float32),
        targets=targets,
        weights_sha256=weights_sha256,
    )


def write_beside(folder: str | Path) -> Path:
    """Write the index beside the ensemble in ``folder`` (bound to its fold weights)."""
    from NoduleMalignancyLib.core.model.similar import weights_digest

    folder = Path(folder)
    folds = json.loads((folder / "manifest.json").read_text())["folds"]
    return index_for(len(folds), weights_digest(folds)).save(folder)
