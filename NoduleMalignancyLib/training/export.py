"""A finished run's folds as a shipped ensemble: fp16 weights, manifest, out-of-fold fusion."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..core.errors import MissingFileError
from ..core.model.metrics import auroc
from ..core.model.network import build_network
from ..core.settings import git_commit
from .config import TrainConfig
from .oof import OOF_COLUMNS, finished_folds, number, oof_metrics, pool_oof
from .run_files import BEST, CONFIG, SUMMARY, finite_json


def export_ensemble(
    run_dir: str | os.PathLike,
    models_dir: str | os.PathLike,
    echo: Callable[[str], None] = print,
) -> dict:
    """Write the finished folds of a run as an ensemble (fp16 weights + manifest) with fusion.

    The fusion (fusion.py: each head with the measured size and density) is fitted on the pooled
    OOF rows, which are also written to ``<run_dir>/oof.csv``.
    """
    from ..core.model.ensemble import save_ensemble
    from ..core.model.fusion import (
        CALIBRATION,
        MALIGNANCY_PROBABILITY,
        MEASURED_COLUMNS,
        apply_fusion,
        fit_fusion,
        fusion_oof,
        malignancy_calibration,
        oof_fusion_inputs,
    )

    run_dir = Path(run_dir)
    info = json.loads((run_dir / CONFIG).read_text())
    cfg = TrainConfig.from_dict(info["train"])
    fold_dirs = finished_folds(run_dir)
    if not fold_dirs:
        raise MissingFileError(f"No finished fold (best.pt + oof.csv) in {run_dir}.")
    models, per_fold = [], []
    for d in fold_dirs:
        model = build_network(cfg.network)
        model.load_state_dict(torch.load(d / BEST, map_location="cpu", weights_only=True))
        models.append(model.eval())
        summary = json.loads((d / SUMMARY).read_text()) if (d / SUMMARY).is_file() else {}
        per_fold.append(
            {
                "fold": int(d.name[4:]),
                "epochs": summary.get("epochs"),
                "best_epoch": summary.get("best_epoch"),
                "train_seconds": summary.get("train_seconds"),
                "oof_auroc": summary.get("oof_auroc"),
            }
        )
    rows = pool_oof(run_dir)
    metrics = oof_metrics(rows)
    present = [c for c in OOF_COLUMNS if rows and c in rows[0]]
    table = {c: np.array([number(r[c]) for r in rows]) for c in present}
    inputs = oof_fusion_inputs(table)
    if inputs is None:
        raise ValueError(f"{run_dir}/oof.csv lacks {MEASURED_COLUMNS}: rerun train to refresh it")
    heads, measured, targets = inputs
    fusion = fit_fusion(heads, measured, targets)
    # Honest variant: each fold's rows scored by a fusion fitted on the other folds only.
    fold_col = np.array([int(r["fold"]) for r in rows])
    label = targets[MALIGNANCY_PROBABILITY]
    mal = heads["malignancy"]
    metrics["oof_auroc_fused_in_sample"] = auroc(
        label, apply_fusion(fusion, MALIGNANCY_PROBABILITY, mal, measured)
    )
    metrics["oof_auroc_fused_cross_fold"] = auroc(
        label, fusion_oof(MALIGNANCY_PROBABILITY, mal, measured, label, fold_col)
    )
    # The shown malignancy is sigmoid(slope x fused logit); the slope comes from the fusion's
    # cross-fitted logits, where its overfitting shows (core/model/fusion.py, CALIBRATION).
    fusion[CALIBRATION] = malignancy_calibration(mal, measured, label, fold_col)
    folds_file = info.get("folds_file")
    commit = info.get("git_commit")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d")
    short = (commit or info.get("data_hash", "nohash"))[:7]
    version = f"lidc-mil-{stamp}-{short}"
    extra = {
        "training": {
            "run_dir": str(run_dir),
            "folds_file": folds_file,
            "folds_sha256": info.get("folds_sha256"),
            "data_hash": info.get("data_hash"),
            "git_commit": commit,
            "exported_with_commit": git_commit(),
            "torch": info.get("torch"),
            "seed": cfg.seed,
            "phases": [asdict(p) for p in cfg.phases],
            "init_from": info.get("init_from"),
            "epochs": cfg.total_epochs,
            "folds": per_fold,
            "oof": metrics,
        }
    }
    manifest = save_ensemble(
        models,
        Path(models_dir),
        version,
        cfg.voi,
        cfg.network,
        fusion=fusion,
        extra=finite_json(extra),
        fold_ids=[f["fold"] for f in per_fold],
    )
    echo(
        f"exported {len(models)} fold(s) as {version} to {models_dir} "
        f"(OOF AUROC {metrics['oof_auroc']:.3f})"
    )
    return manifest.to_dict()
