"""Evidence maps of the same nodules by earlier ensembles and the shipped one (issue:
explanations that hold, part 5).

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/maps_before_after.py \
        docs/experiments/figures/maps_before_after.png OLD_MODELS_DIR [OLD_MODELS_DIR ...]

OLD_MODELS_DIR: earlier ensembles, one row each above the shipped one, e.g.
``lidc-mil-20261124-00f10f9`` (collapsed gates): ``git archive 6a421e3 models | tar -x -C
/tmp/v4`` then ``/tmp/v4/models``; ``lidc-mil-20261202-aed8d39`` (head dropout, no entropy
term): ``git archive 410382c models | tar -x -C /tmp/v5``. Each nodule is
shown by the fold model that never saw its patient, in both ensembles (out of fold, as
``nodule-malignancy maps`` scores them): the axial slice through the VOI centre, lung window,
the combined evidence (red positive, blue negative, each row on its own symmetric scale) and
the segmentation outline. The nodules are the first malignant and benign VOIs (by file name)
of each fold, not chosen by how their maps look.
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.model.folds import DEFAULT_FOLDS_FILE, load_folds
from NoduleMalignancyLib.core.nodule.analysis import _result, sample_and_run
from NoduleMalignancyLib.core.nodule.evidence import COMBINED
from NoduleMalignancyLib.evaluation.maps import fold_ensembles
from NoduleMalignancyLib.training.dataset import load_records


def pick(records, folds) -> list:
    """Per fold the first malignant and the first benign nodule by name."""
    chosen = []
    for fold in range(5):
        for label in (1.0, 0.0):
            rec = next(
                r
                for r in sorted(records, key=lambda r: r.name)
                if folds.get(r.patient_id) == fold and r.label == label
            )
            chosen.append((fold, rec))
    return chosen


def main(out: str, old_dirs: list[str]) -> None:
    torch.set_num_threads(1)
    folds = load_folds(DEFAULT_FOLDS_FILE)
    ensembles = {}
    for d in old_dirs:
        ens = Ensemble.load(d, device="cpu")
        ensembles[f"before: {ens.version}"] = fold_ensembles(ens)
    shipped = Ensemble.load(device="cpu")
    ensembles[f"shipped: {shipped.version}"] = fold_ensembles(shipped)
    chosen = pick(load_records(), folds)
    rows = len(ensembles)
    fig, axes = plt.subplots(rows, len(chosen), figsize=(2.2 * len(chosen), 2.6 * rows), dpi=110)
    for col, (fold, rec) in enumerate(chosen):
        img = sitk.ReadImage(str(rec.image_path))
        a, g = sitk.GetArrayFromImage(img).astype(np.float32), ImageGeometry.from_sitk(img)
        for row, (title, models) in enumerate(ensembles.items()):
            sample, outputs, _ = sample_and_run(a, g, rec.center_lps, models[fold])
            result = _result(sample, outputs, models[fold], rec.center_lps, {})
            k = sample.hu.shape[0] // 2
            ev = result.evidence_voi[COMBINED][k]
            lim = float(np.abs(ev).max()) or 1.0
            ax = axes[row, col]
            ax.imshow(sample.hu[k], cmap="gray", vmin=-1000, vmax=400)
            ax.imshow(
                np.ma.masked_where(np.abs(ev) < 0.05 * lim, ev),
                cmap="bwr",
                vmin=-lim,
                vmax=lim,
                alpha=0.6,
            )
            ax.contour(
                result.segmentation_mask_voi[k], levels=[0.5], colors="yellow", linewidths=0.8
            )
            ax.set_xticks([])
            ax.set_yticks([])
            label = "malignant" if rec.label == 1.0 else "benign"
            if row == 0:
                ax.set_title(f"{rec.name}\n{label}, fold {fold}", fontsize=7)
            ax.set_xlabel(f"MIL logit {result.malignancy_mil_logit:+.2f}", fontsize=7)
            if col == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
