"""K-fold training of the multi-scale MIL network: the whole run, fold after fold.

:func:`run_training` prepares the folds file and the training cache, trains every requested fold
(``fold.py``: the epoch loop as named steps) and optionally exports the ensemble (``export.py``).
The other parts: ``config.py`` (what defines a run), ``batches.py`` (batches, predictions,
validation metrics), ``optimization.py`` (one optimiser step), ``init_from.py`` (the ensemble a
run starts from), ``oof.py`` (out-of-fold tables), ``run_files.py`` (the run folder's files).
The names below are re-exported because documents and scripts import them from here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..core import settings
from ..core.model.folds import DEFAULT_FOLDS_FILE, folds_sha256
from .batches import Batcher, predict, validation_metrics
from .config import WIDTH_PRESETS, PhaseConfig, TrainConfig
from .dataset import TrainingData, load_training_data
from .distributed import SINGLE, DistContext, check_batch_size
from .export import export_ensemble
from .fold import selection_score, silent, train_fold
from .init_from import init_provenance, init_state
from .oof import OOF_COLUMNS, oof_metrics, pool_oof, refresh_oof, write_oof
from .run_files import BEST, CHECKPOINT, CONFIG, HISTORY, OOF, SUMMARY, run_info, write_run_json

__all__ = [
    "BEST",
    "CHECKPOINT",
    "CONFIG",
    "HISTORY",
    "OOF",
    "OOF_COLUMNS",
    "SUMMARY",
    "WIDTH_PRESETS",
    "Batcher",
    "PhaseConfig",
    "TrainConfig",
    "export_ensemble",
    "init_provenance",
    "init_state",
    "oof_metrics",
    "pool_oof",
    "predict",
    "refresh_oof",
    "run_training",
    "selection_score",
    "train_fold",
    "validation_metrics",
    "write_oof",
]


def run_training(
    config: TrainConfig,
    data: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    folds_to_train: Sequence[int] | None = None,
    resume: bool = True,
    export_to: str | os.PathLike | None = None,
    folds_file: str | os.PathLike = DEFAULT_FOLDS_FILE,
    cache: str | os.PathLike | None = None,
    limit: int | None = None,
    echo: Callable[[str], None] = print,
    dist: DistContext = SINGLE,
) -> dict:
    """Cache, folds file, every requested fold, then (optionally) the ensemble export.

    Under torchrun (``dist``) rank 0 creates the folds file and the cache before the other
    ranks read them, and alone writes the run's files (docs/DESIGN.md §13).
    """
    from ..core.model.folds import ensure_folds
    from .dataset import load_records

    check_batch_size(config.batch_size, dist.world)
    echo = echo if dist.is_main else silent
    init_info = init_provenance(config)  # a mismatched --init-from fails before the data load
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(config.threads))
    all_records = load_records(data)
    folds = dist.main_first(
        lambda: ensure_folds(
            [r.patient_id for r in all_records],
            [r.malignancy_mean for r in all_records],
            folds_file,
            config.k,
        )
    )
    t0 = time.perf_counter()
    td = dist.main_first(
        lambda: load_training_data(data, config.voi, config.canvas_zyx, cache, limit=limit)
    )
    echo(
        f"data: {len(td)} nodules, cache {'hit' if td.meta.get('cache_hit') else 'built'} "
        f"in {time.perf_counter() - t0:.1f} s (build time {td.build_seconds:.1f} s)"
    )
    phase_data = dist.main_first(
        lambda: {
            ph.data: load_training_data(ph.data, config.voi, config.canvas_zyx, cache)
            for ph in config.phases
            if ph.data is not None
        }
    )
    if dist.is_main:
        _write_run_config(
            run_dir, config, td, data, folds_file, folds_to_train, resume, dist, init_info
        )
    summaries = []
    for k in folds_to_train if folds_to_train is not None else range(config.k):
        summaries.append(
            train_fold(k, config, td, run_dir, resume, folds, phase_data, echo=echo, dist=dist)
        )
    result = None
    if dist.is_main:
        result = {"folds": summaries, "oof_rows": len(pool_oof(run_dir))}
        if export_to is not None:
            result["manifest"] = export_ensemble(run_dir, export_to, echo=echo)
    return dist.broadcast(result)


def _write_run_config(
    run_dir: Path,
    config: TrainConfig,
    td: TrainingData,
    data,
    folds_file,
    folds_to_train: Sequence[int] | None,
    resume: bool,
    dist: DistContext,
    init_info: dict | None = None,
) -> None:
    """The run's ``config.json``: settings, data hash, folds file, commit and the ensemble the
    folds started from, if any (provenance)."""
    info = run_info(
        config,
        td,
        data_dir=str(settings.data_dir(data) or ""),
        folds_file=str(folds_file),
        folds_sha256=folds_sha256(folds_file),
        folds=list(folds_to_train if folds_to_train is not None else range(config.k)),
        processes=dist.world,
        **({} if init_info is None else {"init_from": init_info}),
    )
    if resume and (run_dir / CONFIG).is_file():
        # Keep the provenance of the run that trained the existing folds (commit, date); only
        # the list of folds grows. Each fold's own config.json records who trained it.
        earlier = json.loads((run_dir / CONFIG).read_text())
        info = earlier | {"folds": sorted(set(earlier.get("folds", [])) | set(info["folds"]))}
    write_run_json(run_dir / CONFIG, info)
