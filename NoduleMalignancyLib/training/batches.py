"""Batches of nodules for the network, centre-crop predictions and the validation metrics.

Why one module: training, validation and the out-of-fold tables all read the nodules through
:class:`Batcher` and score them with :func:`predict`, so the three see the same inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.config import ATTRIBUTES, ORDINAL_ATTRIBUTES, VoiConfig
from ..core.model.fusion import MEASUREMENTS
from ..core.model.metrics import auroc, dice, mae_1to5
from ..core.nodule.measurements import component_at_center, measure_nodule
from .augment import AugmentConfig, center_crop, make_batch, random_params
from .dataset import TrainingData
from .losses import multitask_loss

MALIGNANCY = ATTRIBUTES.index("malignancy")
ORDINAL_IDX = [ATTRIBUTES.index(a) for a in ORDINAL_ATTRIBUTES]


class Batcher:
    """Turns nodule indices of a TrainingData into network inputs and targets."""

    def __init__(
        self, data: TrainingData, voi: VoiConfig, device: torch.device, channels_last=False
    ):
        self.voi = voi
        self.device = device
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.hu = torch.from_numpy(np.ascontiguousarray(data.hu))
        self.valid = torch.from_numpy(np.ascontiguousarray(data.valid))
        self.mask = torch.from_numpy(np.ascontiguousarray(data.mask))
        self.has_mask = torch.from_numpy(data.has_mask.astype(np.float32))
        t = data.targets
        self.targets = torch.from_numpy(np.nan_to_num(t, nan=0.0)).float()
        self.target_mask = torch.from_numpy(np.isfinite(t))

    def batch(
        self, idx, augment: AugmentConfig | None, generator=None, train=True, rows=None
    ) -> dict:
        """The batch of nodules ``idx``, or only its ``rows`` (a process's shard): the random
        transforms are drawn for the whole batch either way, so a row is augmented the same in
        both (docs/DESIGN.md §13)."""
        idx = np.asarray(idx)
        params = None
        if rows is not None:
            if train and augment is not None and augment.enabled:
                drawn = random_params(len(idx), augment, generator)
                params = {k: v[rows] for k, v in drawn.items()}
            idx = idx[np.asarray(rows, dtype=int)]
        idx = torch.as_tensor(idx, dtype=torch.long)
        x, seg, valid = make_batch(
            self.hu[idx],
            self.valid[idx],
            self.mask[idx],
            self.voi,
            augment,
            generator,
            train,
            params,
        )
        weight = valid * self.has_mask[idx].view(-1, 1, 1, 1, 1)
        dev = self.device
        return {
            "x": x.to(dev).contiguous(memory_format=self.memory_format),
            "attributes": self.targets[idx].to(dev),
            "attribute_mask": self.target_mask[idx].to(dev),
            "seg": seg.to(dev),
            "valid": weight.to(dev),
            "valid_input": valid,
        }


@torch.no_grad()
def predict(
    model: torch.nn.Module, batcher: Batcher, indices, batch_size: int = 32, sizes: bool = False
) -> dict:
    """Centre-crop predictions: bag logits (N, 9), per-nodule Dice and (optionally) what is
    measured on the predicted segmentation (size, mean HU, calcified fraction), as at inference."""
    model.eval()
    dev = batcher.device
    logits, dices, losses = [], [], []
    measured: dict[str, list[float]] = {m: [] for m in MEASUREMENTS}
    spacing = batcher.voi.spacing_zyx
    indices = list(indices)
    for s in range(0, len(indices), batch_size):
        b = batcher.batch(indices[s : s + batch_size], None, train=False)
        with torch.autocast(dev.type, enabled=dev.type == "cuda", dtype=torch.float16):
            out = model(b["x"])
        loss, _ = multitask_loss(
            {k: (v.float() if torch.is_tensor(v) else v) for k, v in out.items()}, b
        )
        losses.append(float(loss) * len(b["x"]))
        logits.append(out["bag_logits"].float().cpu())
        prob = torch.sigmoid(out["seg_logits"].float()).cpu()[:, 0].numpy()
        valid = b["valid_input"][:, 0].numpy() > 0.5
        ref = b["seg"][:, 0].cpu().numpy() >= 0.5
        if sizes:
            rows = torch.as_tensor(indices[s : s + batch_size], dtype=torch.long)
            hu = center_crop(batcher.hu[rows], batcher.voi.shape_zyx).float().numpy()
        for i in range(len(prob)):
            pred = (prob[i] >= 0.5) & valid[i]
            dices.append(dice(pred, ref[i] & valid[i]))
            if sizes:
                values = measure_nodule(hu[i], component_at_center(pred), spacing, valid[i])
                for m, v in measured.items():
                    v.append(values[m])
    has_mask = batcher.has_mask[torch.as_tensor(indices, dtype=torch.long)].numpy() > 0
    return {
        "logits": torch.cat(logits).numpy() if logits else np.zeros((0, len(ATTRIBUTES))),
        "dice": np.where(has_mask, np.asarray(dices, dtype=float), np.nan),
        **{m: np.asarray(v, dtype=float) for m, v in measured.items()},
        "loss": sum(losses) / max(1, len(indices)),
    }


def validation_metrics(pred: dict, data: TrainingData, indices) -> dict:
    """Malignancy AUROC (label > 3 vs < 3), ordinal attribute MAE on the 1-5 scale, Dice."""
    idx = np.asarray(list(indices), dtype=int)
    prob = 1.0 / (1.0 + np.exp(-pred["logits"]))
    labels = data.labels[idx]
    t = data.targets[idx][:, ORDINAL_IDX]
    return {
        "val_auroc": auroc(labels, prob[:, MALIGNANCY]) if len(idx) else math.nan,
        "val_mae": mae_1to5(prob[:, ORDINAL_IDX], t),
        "val_dice": float(np.nanmean(pred["dice"]))
        if np.isfinite(pred["dice"]).any()
        else math.nan,
        "val_loss": pred["loss"],
    }
