"""A training run's folder: the names of its files and how they are written.

``<run>/fold<k>/`` holds ``checkpoint.pt`` (after every epoch: a killed run resumes at the next),
``history.csv``, ``config.json``, and once the fold is finished ``best.pt``, ``oof.csv`` and
``summary.json``; ``<run>/`` its ``config.json`` and the pooled ``oof.csv``.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..core.atomic import atomic_path, finite_json, write_json
from ..core.settings import git_commit
from ..files.csv_cells import write_csv
from .config import TrainConfig
from .dataset import TrainingData

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
OOF = "oof.csv"
HISTORY = "history.csv"
SUMMARY = "summary.json"
CONFIG = "config.json"


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file (a kill mid-save keeps the old one)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_table(path: Path, rows: list[dict], columns: Sequence[str] | None = None) -> None:
    """Rows as CSV (floats to 6 significant digits, NaN empty), atomically."""
    columns = list(columns or (rows[0].keys() if rows else []))
    write_csv(path, rows, columns, _fmt)


def _fmt(v):
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.6g}"
    return v


def write_run_json(path: Path, obj) -> None:
    """Strict JSON (NaN and infinities as null, numpy numbers as numbers), atomically."""
    write_json(path, finite_json(obj), default=_json_default)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def run_info(cfg: TrainConfig, data: TrainingData, **extra) -> dict:
    """Provenance of a run or fold: settings, data hash, commit, versions, machine, time."""
    return {
        "train": cfg.to_dict(),
        "seed": cfg.seed,
        "data_hash": data.data_hash,
        "n_nodules": len(data),
        "cache_build_seconds": data.build_seconds,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
