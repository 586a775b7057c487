"""Flip test-time augmentation, out of fold: does averaging over mirrored inputs help?

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/flip_tta.py tta.csv

Every LIDC VOI is clicked at its listed centre by the fold model that never saw its patient
(the click path's context passes included); on the crop the click settles on, the model also
runs on the input mirrored left-right, front-back and both (the training augmentation flips
every axis). Per nodule: the MIL malignancy logit of the plain pass and the mean over the 4
inputs, and the fused probability with each (measurements from the plain pass' segmentation,
the shipped fusion). Prints the AUROCs and their paired bootstrap differences (patients as
clusters). A mirrored pass costs one more network pass per fold on the final crop.
"""

import csv
import sys

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.config import ATTRIBUTES
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.model.folds import DEFAULT_FOLDS_FILE, load_folds
from NoduleMalignancyLib.core.model.fusion import (
    MALIGNANCY_PROBABILITY,
    apply_fusion,
    measured_features,
)
from NoduleMalignancyLib.core.model.metrics import auroc, paired_auroc_difference
from NoduleMalignancyLib.core.nodule.analysis import nodule_mask, sample_and_run
from NoduleMalignancyLib.core.nodule.measurements import hu_gradient_magnitude, measure_nodule
from NoduleMalignancyLib.evaluation.maps import fold_ensembles
from NoduleMalignancyLib.training.dataset import load_records

MALIGNANCY = ATTRIBUTES.index("malignancy")
FLIPS = ((), (-1,), (-2,), (-1, -2))  # none, x, y, x and y of (C, z, y, x)


def main(path: str) -> None:
    torch.set_num_threads(1)
    ensemble = Ensemble.load(device="cpu")
    fusion, spacing = ensemble.manifest.fusion, ensemble.manifest.voi.spacing_zyx
    models = fold_ensembles(ensemble)
    folds = load_folds(DEFAULT_FOLDS_FILE)
    rows = []
    for rec in load_records():
        fold = folds.get(rec.patient_id)
        if fold is None or not np.isfinite(rec.label):
            continue
        img = sitk.ReadImage(str(rec.image_path))
        a, g = sitk.GetArrayFromImage(img).astype(np.float32), ImageGeometry.from_sitk(img)
        try:
            sample, out, _ = sample_and_run(a, g, rec.center_lps, models[fold])
        except ValueError:
            continue
        logits = [float(out.bag_logits[0, 0, MALIGNANCY])]
        for axes in FLIPS[1:]:
            flipped = np.ascontiguousarray(np.flip(sample.channels, axes))
            logits.append(float(models[fold].run(flipped[None]).bag_logits[0, 0, MALIGNANCY]))
        mask = nodule_mask(out.seg_probability[0, 0], sample.valid)
        gradient = hu_gradient_magnitude(sample.hu, spacing)
        measured = measured_features(
            [measure_nodule(sample.hu, mask, spacing, sample.valid, gradient)]
        )
        plain, mean = logits[0], float(np.mean(logits))
        fused = [
            float(apply_fusion(fusion, MALIGNANCY_PROBABILITY, np.array([v]), measured)[0])
            for v in (plain, mean)
        ]
        rows.append(
            dict(
                name=rec.name,
                patient=rec.patient_id,
                fold=fold,
                label=int(rec.label),
                mil_plain=plain,
                mil_tta=mean,
                fused_plain=fused[0],
                fused_tta=fused[1],
                flip_sd=float(np.std(logits)),
            )
        )
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    y = np.array([r["label"] for r in rows])
    groups = np.array([r["patient"] for r in rows])
    for kind in ("mil", "fused"):
        plain = np.array([r[f"{kind}_plain"] for r in rows])
        tta = np.array([r[f"{kind}_tta"] for r in rows])
        d = paired_auroc_difference(y, tta, plain, groups=groups)
        print(
            f"{kind}: AUROC plain {auroc(y, plain):.4f}, flip TTA {auroc(y, tta):.4f}, "
            f"difference {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] (n={len(y)})"
        )
    print(
        "median SD of the MIL logit over the 4 inputs:",
        round(float(np.median([r["flip_sd"] for r in rows])), 3),
    )


if __name__ == "__main__":
    main(sys.argv[1])
