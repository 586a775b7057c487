"""The out-of-fold table of one fold of an exported ensemble, as training writes it for a run.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/shipped_fold_oof.py \
        RECIPE.json FOLD OUT.csv [MODELS]

For paired comparisons of a one-fold pilot with the shipped fold (paired_fold_auroc.py) when the
shipped run's folder is not on the machine: the fold's weights (sha256-checked, fp16 -> fp32,
as training's ``init_from`` reads them) predict the fold's validation nodules through
training's own ``write_oof`` (centre crop, no TTA). RECIPE is the configuration the ensemble was
trained with (its network must match; the shipped ``lidc-mil-20261202-aed8d39``:
head_dropout_no_entropy.json). Its fold 1 gives the logged AUROC 0.881 and MAE 0.437 again.
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from NoduleMalignancyLib.core.model.folds import DEFAULT_FOLDS_FILE, load_folds
from NoduleMalignancyLib.training import train
from NoduleMalignancyLib.training.dataset import load_training_data


def main(recipe: str, fold: int, out: str, models: str = "models") -> None:
    torch.set_num_threads(1)
    cfg = train.TrainConfig.from_dict(json.loads(Path(recipe).read_text()))
    cfg = dataclasses.replace(cfg, init_from=models)
    state, _ = train.init_state(cfg, fold)
    data = load_training_data(None, cfg.voi, cfg.canvas_zyx, None)
    folds = load_folds(DEFAULT_FOLDS_FILE)
    held_out = np.asarray([i for i, p in enumerate(data.patient_ids) if folds[p] == fold], int)
    cpu = torch.device("cpu")
    model = cfg.build_model(cpu)
    model.load_state_dict(state)
    batcher = train.Batcher(data, cfg.voi, cpu, cfg.channels_last)
    rows = train.write_oof(model, batcher, data, held_out, fold, Path(out), cfg)
    print(len(rows), "rows:", train.oof_metrics(rows))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:])
