"""The ensemble a run starts from (``init_from``): its checks, provenance and fold weights.

Why checked before anything loads: weights of another network layout would not load, and
another VOI or attribute list would be silently wrong.
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import ATTRIBUTES
from .config import TrainConfig


def _init_manifest(cfg: TrainConfig):
    """The manifest of ``cfg.init_from``, refused unless its network, VOI and attributes are the
    run's own (weights of another layout would not load, another VOI would be silently wrong)."""
    from ..core.model.ensemble import Manifest

    directory = Path(cfg.init_from)
    manifest = Manifest.read(directory)
    for what, theirs, ours in (
        ("network", manifest.network.to_dict(), cfg.network.to_dict()),
        ("voi", manifest.voi.to_dict(), cfg.voi.to_dict()),
    ):
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            detail = ", ".join(f"{k}: {theirs.get(k)} there, {ours.get(k)} here" for k in diff)
            raise ValueError(
                f"--init-from {directory}: its {what} configuration is not this run's ({detail})"
            )
    if tuple(manifest.attributes) != ATTRIBUTES:
        raise ValueError(
            f"--init-from {directory} predicts {manifest.attributes}, not {ATTRIBUTES}"
        )
    return manifest


def _fold_entry(manifest, fold: int, directory) -> dict:
    for i, entry in enumerate(manifest.folds):
        if int(entry.get("fold", i)) == fold:
            return entry
    raise ValueError(f"--init-from {directory} has no weights of fold {fold}")


def init_provenance(cfg: TrainConfig) -> dict | None:
    """What ``cfg.init_from`` is (path, version, each fold's file and sha256), for config.json
    and the exported manifest; None without one. Checks the configuration (above)."""
    if cfg.init_from is None:
        return None
    manifest = _init_manifest(cfg)
    return {
        "path": str(cfg.init_from),
        "version": manifest.version,
        "folds": [
            {"fold": int(e.get("fold", i)), "file": e["file"], "sha256": e["sha256"]}
            for i, e in enumerate(manifest.folds)
        ],
    }


def init_state(cfg: TrainConfig, fold: int) -> tuple[dict, dict]:
    """Fold ``fold``'s float32 weights of the ensemble ``cfg.init_from`` and their provenance.

    Read through core/model/ensemble.py's sha256 check and ``weights_only`` loading, like inference.
    """
    from ..core.model.ensemble import load_verified_state

    directory = Path(cfg.init_from)
    manifest = _init_manifest(cfg)
    entry = _fold_entry(manifest, fold, directory)
    state = load_verified_state(directory / entry["file"], entry["sha256"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    info = {"path": str(directory), "version": manifest.version, "fold": fold}
    return state, info | {"file": entry["file"], "sha256": entry["sha256"]}
