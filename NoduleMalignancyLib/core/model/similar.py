"""Similar nodules: the LIDC nodules closest to a query in the ensemble's own embedding.

Embedding: each fold's gate-pooled MIL features (:func:`.network.pooled_features`). Every
attribute's bag logit is a linear read-out of them, so nodules close there are nodules the heads
see alike; that is what makes the neighbours an explanation of the model rather than a second
model. Each fold's features are standardised by the index's mean and standard deviation; the
distance is the root-mean-square difference per feature, averaged over the folds.

The index is the training set itself (the LIDC nodules: identifiers, reader ratings and
diameters; no images), written next to the ensemble and bound to its fold weights by digest
(:func:`weights_digest`), so an index never answers for weights it was not built with; a new
calibration or fusion does not change the embedding and keeps the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import sha256_of
from ..config import ATTRIBUTES, ORDINAL_ATTRIBUTES

log = logging.getLogger(__name__)

INDEX_FILE = "similar_nodules.npz"
INDEX_INFO = "similar_nodules.json"
DEFAULT_K = 6
# A neighbour whose mean reader malignancy is above 3 is "rated suspicious" (the label protocol
# of docs/DESIGN.md §4: > 3 malignant, < 3 benign).
SUSPICIOUS_ABOVE = 3.0


@dataclass(frozen=True)
class SimilarNodule:
    """One neighbour: who it is, how far, and what the LIDC readers said of it."""

    nodule: str  # "<patient>_R_<nodule>", the LIDC VOI name
    patient_id: str
    distance: float  # RMS per standardised feature, mean over folds
    diameter_mm: float  # mean reader diameter
    malignancy_mean: float  # mean reader malignancy rating, 1-5
    ratings: dict[str, float]  # mean reader rating 1-5 (ordinal) or share of readers (presence)

    def to_dict(self) -> dict:
        return asdict(self)


def ratings_from_targets(targets: np.ndarray) -> dict[str, float]:
    """Training targets (ATTRIBUTES order, in [0, 1]) -> 1-5 ratings / presence shares."""
    out = {}
    for name, t in zip(ATTRIBUTES, np.asarray(targets, dtype=float), strict=True):
        out[name] = float(1 + 4 * t) if name in ORDINAL_ATTRIBUTES else float(t)
    return out


@dataclass
class SimilarIndex:
    """The embedded LIDC nodules of one ensemble."""

    features: np.ndarray  # (K, M, F) per fold
    patient_id: np.ndarray  # (M,) str
    nodule: np.ndarray  # (M,) str
    diameter_mm: np.ndarray  # (M,)
    malignancy_mean: np.ndarray  # (M,)
    targets: np.ndarray  # (M, len(ATTRIBUTES)) reader targets in [0, 1]
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        f = np.asarray(self.features, dtype=np.float32)
        if f.ndim != 3 or f.shape[1] != len(self.nodule):
            raise ValueError(f"index features {f.shape} do not match {len(self.nodule)} nodules")
        self.features = f
        self._mean = f.mean(axis=1, keepdims=True)
        self._scale = f.std(axis=1, keepdims=True) + 1e-6
        self._standard = (f - self._mean) / self._scale

    def distances(self, query: np.ndarray, folds: np.ndarray | None = None) -> np.ndarray:
        """(M,) distance of every indexed nodule to ``query`` (K, F), over ``folds`` (all)."""
        q = np.asarray(query, dtype=np.float32)
        if q.shape != (self.features.shape[0], self.features.shape[2]):
            raise ValueError(
                f"query features {q.shape} do not match the index "
                f"({self.features.shape[0]} folds x {self.features.shape[2]})"
            )
        qs = (q[:, None, :] - self._mean) / self._scale  # (K, 1, F)
        per_fold = np.sqrt(((self._standard - qs) ** 2).mean(axis=2))  # (K, M)
        if folds is not None:
            per_fold = per_fold[np.asarray(folds)]
        return per_fold.mean(axis=0)

    def nearest(
        self,
        query: np.ndarray,
        k: int = DEFAULT_K,
        exclude_patient: str | None = None,
        folds: np.ndarray | None = None,
    ) -> list[SimilarNodule]:
        """The ``k`` closest nodules, nearest first (never one of ``exclude_patient``'s)."""
        rows, d = self.nearest_rows(query, k, exclude_patient, folds)
        return [self.neighbour(int(i), float(di)) for i, di in zip(rows, d, strict=True)]

    def nearest_rows(
        self,
        query: np.ndarray,
        k: int = DEFAULT_K,
        exclude_patient: str | None = None,
        folds: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Index rows of the ``k`` closest nodules and their distances, nearest first."""
        d = self.distances(query, folds)
        if exclude_patient is not None:
            d = np.where(self.patient_id == exclude_patient, np.inf, d)
        order = np.argsort(d, kind="stable")[:k]
        order = order[np.isfinite(d[order])]
        return order, d[order]

    def neighbour(self, i: int, distance: float) -> SimilarNodule:
        return SimilarNodule(
            nodule=str(self.nodule[i]),
            patient_id=str(self.patient_id[i]),
            distance=round(distance, 4),
            diameter_mm=float(self.diameter_mm[i]),
            malignancy_mean=float(self.malignancy_mean[i]),
            ratings=ratings_from_targets(self.targets[i]),
        )

    def save(self, directory: str | Path, info: dict | None = None) -> Path:
        """Write the index (npz, no pickles) and its info (digest, manifest binding)."""
        directory = Path(directory)
        path = directory / INDEX_FILE
        np.savez_compressed(
            path,
            features=self.features.astype(np.float16),
            patient_id=self.patient_id.astype(str),
            nodule=self.nodule.astype(str),
            diameter_mm=self.diameter_mm.astype(np.float32),
            malignancy_mean=self.malignancy_mean.astype(np.float32),
            targets=self.targets.astype(np.float32),
        )
        meta = {
            "file": INDEX_FILE,
            "sha256": sha256_of(path),
            "weights_sha256": self.weights_sha256,
            "nodules": len(self.nodule),
            "folds": int(self.features.shape[0]),
            "features": int(self.features.shape[2]),
            "embedding": "gate-pooled MIL features of each fold (network.pooled_features), "
            "standardised per fold; distance = RMS difference per feature, mean over folds",
            "attributes": list(ATTRIBUTES),
            **(info or {}),
        }
        (directory / INDEX_INFO).write_text(json.dumps(meta, indent=2) + "\n")
        return path


def weights_digest(folds: list[dict]) -> str:
    """sha256 over the fold weights' own sha256 entries of a manifest, in order."""
    return hashlib.sha256("\n".join(f["sha256"] for f in folds).encode()).hexdigest()


def load_similar_index(directory: str | Path, weights_sha256: str) -> SimilarIndex | None:
    """The index beside an ensemble, or None (with a logged reason) when it is absent, damaged,
    or was built for other weights."""
    directory = Path(directory)
    info_path, path = directory / INDEX_INFO, directory / INDEX_FILE
    if not info_path.is_file() or not path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
        if info.get("sha256") != sha256_of(path):
            log.warning("similar-nodule index %s does not match its digest: not used", path)
            return None
        if info.get("weights_sha256") != weights_sha256:
            log.warning("similar-nodule index %s was built for other weights: not used", path)
            return None
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if info.get("attributes") != list(ATTRIBUTES):
            raise ValueError(f"attributes {info.get('attributes')} are not {list(ATTRIBUTES)}")
        return SimilarIndex(weights_sha256=weights_sha256, **arrays)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("similar-nodule index %s unreadable (%s): not used", path, exc)
        return None


def summary_line(neighbours: list[SimilarNodule]) -> str:
    """'6 similar LIDC nodules: 4 rated suspicious' (the panel's and report's one line)."""
    if not neighbours:
        return ""
    n = sum(nb.malignancy_mean > SUSPICIOUS_ABOVE for nb in neighbours)
    return f"{len(neighbours)} similar LIDC nodules: {n} rated suspicious"
