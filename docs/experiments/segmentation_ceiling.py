"""How much of the malignancy AUROC the segmentation costs: measurements on the consensus masks.

The fusion's measurements (size, density, shape, margin) come from the ensemble's own
segmentation. This script measures the same quantities on the data's consensus masks (same VOI
grid, same centre crop) and compares, cross-fitted on the run's folds, against the size-only
baseline. It reads reader-drawn masks, so its figures are a ceiling, not a result.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/segmentation_ceiling.py \
        runs/lidc-v2/oof.csv
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from NoduleMalignancyLib.core.config import VoiConfig
from NoduleMalignancyLib.core.model import fusion
from NoduleMalignancyLib.core.model.metrics import auroc, paired_auroc_difference
from NoduleMalignancyLib.core.nodule.measurements import component_at_center, measure_nodule
from NoduleMalignancyLib.evaluation.baselines import logistic_oof, size_baseline_oof
from NoduleMalignancyLib.evaluation.report import load_table
from NoduleMalignancyLib.training.augment import center_crop
from NoduleMalignancyLib.training.dataset import load_training_data


def consensus_measurements(keys: list[tuple[str, str]]) -> np.ndarray:
    """Fusion features measured on the consensus mask of each (patient_id, nodule_id)."""
    voi = VoiConfig()
    data = load_training_data(voi=voi)
    hu = center_crop(torch.from_numpy(data.hu), voi.shape_zyx).float().numpy()
    valid = center_crop(torch.from_numpy(data.valid), voi.shape_zyx).numpy() > 0.5
    mask = center_crop(torch.from_numpy(data.mask).float(), voi.shape_zyx).numpy() >= 0.5
    index = {(r.patient_id, r.nodule_id): i for i, r in enumerate(data.records)}
    rows = []
    for key in keys:
        i = index[key]
        nodule = component_at_center(mask[i] & valid[i])
        rows.append(measure_nodule(hu[i], nodule, voi.spacing_zyx, valid[i]))
    return fusion.measured_features(rows)


def _line(name: str, y, score, size, groups, small) -> str:
    d = paired_auroc_difference(y, score, size, groups)
    return (
        f"{name:34s} AUROC {auroc(y, score):.3f}  vs size {d['diff']:+.3f} "
        f"[{d['lo']:+.3f}, {d['hi']:+.3f}]  < 10 mm {auroc(y[small], score[small]):.3f}"
    )


def main(oof_csv: str) -> None:
    table = load_table(oof_csv)
    heads, measured, _ = fusion.oof_fusion_inputs(table)
    folds = np.asarray(table["fold"], dtype=int)
    y = np.asarray(table["label"], dtype=float)
    groups = np.asarray(table["patient_id"])
    diameter = np.asarray(table["diameter_mean_mm"], dtype=float)
    small = diameter < 10
    size = size_baseline_oof(diameter, y, folds)
    ceiling = consensus_measurements(
        list(zip(table["patient_id"], table["nodule_id"], strict=True))
    )

    print(_line("size only (reader diameter)", y, size, size, groups, small))
    print(
        _line(
            "own segmentation: head + measured",
            y,
            fusion.fusion_oof(
                fusion.MALIGNANCY_PROBABILITY, heads["malignancy"], measured, y, folds
            ),
            size,
            groups,
            small,
        )
    )
    print(
        _line(
            "own segmentation: measured only",
            y,
            logistic_oof(measured, y, folds),
            size,
            groups,
            small,
        )
    )
    print(
        _line(
            "consensus mask: measured only", y, logistic_oof(ceiling, y, folds), size, groups, small
        )
    )
    for j, name in enumerate(fusion.MEASURED_FEATURES):
        r = np.corrcoef(measured[:, j], ceiling[:, j])[0, 1]
        print(
            f"  {name:30s} AUROC own {auroc(y, measured[:, j]):.3f}  "
            f"consensus {auroc(y, ceiling[:, j]):.3f}  correlation {r:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/lidc-v2/oof.csv")
