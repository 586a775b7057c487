"""Out-of-fold tables: each fold's held-out predictions, their metrics, the pooled table.

The evaluation and the ensemble's fusion read these tables; every nodule is predicted by the
one fold model that never saw its patient.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..core.config import ATTRIBUTES, ORDINAL_ATTRIBUTES
from ..core.model.fusion import MEASUREMENTS
from ..core.model.metrics import auroc, mae_1to5
from ..files.csv_cells import read_csv
from .batches import MALIGNANCY, Batcher, predict
from .config import TrainConfig
from .dataset import TrainingData
from .run_files import BEST, OOF, write_table

OOF_COLUMNS = (
    ["patient_id", "nodule_id", "fold", "label", "malignancy_mean", "diameter_mean_mm"]
    + [f"{a}_target" for a in ATTRIBUTES]
    + [f"{a}_prob" for a in ATTRIBUTES]
    + ["malignancy_logit", *(f"seg_{m}" for m in MEASUREMENTS), "dice"]
)


def write_oof(
    model: torch.nn.Module,
    batcher: Batcher,
    data: TrainingData,
    indices,
    fold: int,
    path: Path,
    cfg: TrainConfig,
) -> list[dict]:
    """Out-of-fold predictions of the held-out patients (centre crop, no TTA) as CSV rows."""
    indices = np.asarray(indices, dtype=int)
    rows = []
    if len(indices):
        pred = predict(model, batcher, indices, cfg.eval_batch_size, sizes=True)
        prob = 1.0 / (1.0 + np.exp(-pred["logits"]))
        for j, i in enumerate(indices):
            r = data.records[i]
            row = {
                "patient_id": r.patient_id,
                "nodule_id": r.nodule_id,
                "fold": fold,
                "label": "" if not np.isfinite(r.label) else int(r.label),
                "malignancy_mean": float(r.malignancy_mean),
                "diameter_mean_mm": float(r.diameter_mean_mm),
            }
            for a, name in enumerate(ATTRIBUTES):
                row[f"{name}_target"] = float(r.targets[a])
                row[f"{name}_prob"] = float(prob[j, a])
            row["malignancy_logit"] = float(pred["logits"][j, MALIGNANCY])
            for m in MEASUREMENTS:
                row[f"seg_{m}"] = float(pred[m][j])
            row["dice"] = float(pred["dice"][j])
            rows.append(row)
    write_table(path, rows, OOF_COLUMNS)
    return rows


def refresh_oof(
    fold_dir: Path,
    cfg: TrainConfig,
    batcher: Batcher,
    data: TrainingData,
    indices,
    fold: int,
    echo: Callable[[str], None] = print,
) -> None:
    """Rewrite a finished fold's oof.csv from its best.pt when its columns are outdated.

    Folds trained by an older version lack newer measured columns (the fusion needs them);
    predicting them again from the saved weights costs seconds, retraining hours.
    """
    with open(fold_dir / OOF, newline="") as f:
        header = next(csv.reader(f), [])
    if list(header) == OOF_COLUMNS:
        return
    model = cfg.build_model(batcher.device)
    model.load_state_dict(torch.load(fold_dir / BEST, map_location="cpu", weights_only=True))
    write_oof(model, batcher, data, indices, fold, fold_dir / OOF, cfg)
    echo(f"fold {fold}: out-of-fold table rewritten with the current columns from {BEST}")


def number(v) -> float:
    """A CSV cell as a float (empty or text: NaN)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def oof_metrics(rows: list[dict]) -> dict:
    """Summary numbers of OOF rows (works on freshly made rows and on rows read from CSV)."""
    label = np.array([number(r["label"]) for r in rows])
    prob = np.array([number(r["malignancy_prob"]) for r in rows])
    vol = np.array([number(r["seg_volume_mm3"]) for r in rows])
    diam = np.array([number(r["diameter_mean_mm"]) for r in rows])
    dice = np.array([number(r["dice"]) for r in rows])
    mae = {}
    for a in ORDINAL_ATTRIBUTES:
        t = np.array([number(r[f"{a}_target"]) for r in rows])
        p = np.array([number(r[f"{a}_prob"]) for r in rows])
        mae[a] = mae_1to5(p, t)
    finite = [v for v in mae.values() if np.isfinite(v)]
    return {
        "n": len(rows),
        "n_labelled": int(np.isfinite(label).sum()),
        "oof_auroc": auroc(label, prob),
        "oof_auroc_seg_volume": auroc(label, vol),
        "oof_auroc_reader_diameter": auroc(label, diam),
        "oof_mae": float(np.mean(finite)) if finite else math.nan,
        "oof_mae_per_attribute": mae,
        "oof_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan,
    }


def finished_folds(run_dir: Path) -> list[Path]:
    """The run's fold folders with ``best.pt`` and ``oof.csv``, in fold order."""
    return sorted(
        (d for d in run_dir.glob("fold*") if (d / BEST).is_file() and (d / OOF).is_file()),
        key=lambda d: int(d.name[4:]),
    )


def pool_oof(run_dir: str | os.PathLike) -> list[dict]:
    """Concatenate the finished folds' oof.csv into ``<run_dir>/oof.csv`` (evaluation reads it)."""
    run_dir = Path(run_dir)
    rows = [r for d in finished_folds(run_dir) for r in read_csv(d / OOF)]
    if rows:
        write_table(run_dir / OOF, rows, OOF_COLUMNS)
    return rows
