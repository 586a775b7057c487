"""K-fold training of the multi-scale MIL network, out-of-fold predictions and ensemble export.

One fold = :func:`train_fold`: multi-task loss, AdamW with a one-cycle cosine schedule per
curriculum phase, gradient clipping, an EMA of the weights (validated every epoch on the held-out
patients, exported), a checkpoint after every epoch (``kill -9`` then rerun continues at the
next epoch), ``history.csv``, ``oof.csv`` and ``best.pt``. :func:`export_ensemble` turns the
finished folds into ``models/`` (fp16 weights, manifest with sha256 and the out-of-fold fusion).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..core import settings
from ..core.atomic import atomic_path, write_json
from ..core.config import ATTRIBUTES, ORDINAL_ATTRIBUTES, TINY_NETWORK, NetworkConfig, VoiConfig
from ..core.device import resolve_device
from ..core.folds import DEFAULT_FOLDS_FILE, folds_sha256, load_folds
from ..core.fusion import MEASUREMENTS
from ..core.measurements import component_at_center, measure_nodule
from ..core.metrics import auroc, dice, mae_1to5
from ..core.network import build_network
from ..core.settings import git_commit
from ..files.csv_cells import read_csv, write_csv
from .augment import AugmentConfig, center_crop, make_batch, random_params
from .dataset import DEFAULT_CANVAS_ZYX, TrainingData, load_training_data
from .distributed import SINGLE, DistContext, check_batch_size, shard_rows, wrap_model
from .losses import LossWeights, Normalisers, loss_counts, multitask_loss

log = logging.getLogger(__name__)

MALIGNANCY = ATTRIBUTES.index("malignancy")
ORDINAL_IDX = [ATTRIBUTES.index(a) for a in ORDINAL_ATTRIBUTES]
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
OOF = "oof.csv"
HISTORY = "history.csv"
SUMMARY = "summary.json"
CONFIG = "config.json"

# Width presets for --width (CPU cost is dominated by the first two levels).
WIDTH_PRESETS: dict[str, NetworkConfig] = {
    "default": NetworkConfig(),
    "light": NetworkConfig(widths=(8, 16, 32, 64), pyramid_channels=32, decoder_widths=(8, 16, 32)),
    "tiny": TINY_NETWORK,
}


@dataclass(frozen=True)
class PhaseConfig:
    """One curriculum phase: its length, peak learning rate and which losses are active.

    ``attributes``: heads trained in this phase (the others' targets are masked out);
    ``segmentation``: whether the decoder is trained (off = not even run); ``data``: another VOI
    folder in the same format to train on (None = the main training split); ``freeze``:
    parameter-name prefixes kept fixed; ``loss_weights``: overrides of :class:`LossWeights`;
    ``malignancy_confident``: ``(low, high)`` keeps only the training nodules whose mean reader
    malignancy is <= low or >= high (unrated ones are dropped); the held-out fold is never
    filtered.
    """

    name: str = "lidc"
    epochs: int = 25
    lr: float = 2e-3
    warmup: float = 0.2
    attributes: tuple[str, ...] = ATTRIBUTES
    segmentation: bool = True
    data: str | None = None
    freeze: tuple[str, ...] = ()
    loss_weights: dict = field(default_factory=dict)
    malignancy_confident: tuple[float, float] | None = None

    def __post_init__(self):
        band = self.malignancy_confident
        if band is not None:
            if len(band) != 2 or not all(np.isfinite(v) for v in band) or band[0] > band[1]:
                raise ValueError(
                    f"phase {self.name}: malignancy_confident must be [low, high] with "
                    f"low <= high, got {list(band)}"
                )

    @classmethod
    def from_dict(cls, d: dict) -> PhaseConfig:
        d = dict(d)
        for key in ("attributes", "freeze"):
            if key in d:
                d[key] = tuple(d[key])
        if d.get("malignancy_confident") is not None:
            d["malignancy_confident"] = tuple(float(v) for v in d["malignancy_confident"])
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown phase settings: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (written to ``config.json``)."""

    voi: VoiConfig = field(default_factory=VoiConfig)
    # The light preset: ~26-30 s/epoch on 2 CPU cores vs ~65-150 s for the default widths.
    network: NetworkConfig = field(default_factory=lambda: WIDTH_PRESETS["light"])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    phases: tuple[PhaseConfig, ...] = (PhaseConfig(),)
    loss: dict = field(default_factory=dict)
    batch_size: int = 16
    eval_batch_size: int = 32
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    seed: int = 2026
    k: int = 5
    threads: int = 2
    balanced_sampling: bool = False
    canvas_zyx: tuple[int, int, int] = DEFAULT_CANVAS_ZYX
    # Selection: mean val AUROC of the last `select_window` epochs, + dice_w * Dice - mae_w * MAE.
    select_window: int = 3
    select_dice_weight: float = 0.05
    select_mae_weight: float = 0.05
    device: str = "auto"
    # channels-last 3D tensors: ~1.4-1.8x faster convolutions on CPU (oneDNN), same numbers.
    channels_last: bool = True
    # An ensemble folder (manifest.json + fold weights, e.g. models/): fold k starts from its
    # fold-k weights instead of a random initialisation (fine-tuning phases).
    init_from: str | None = None

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["voi"] = self.voi.to_dict()
        d["network"] = self.network.to_dict()
        d["augment"] = self.augment.to_dict()
        d["phases"] = [asdict(p) for p in self.phases]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        if "voi" in d:
            d["voi"] = VoiConfig.from_dict(d["voi"])
        if "network" in d:
            d["network"] = NetworkConfig.from_dict(d["network"])
        if "augment" in d:
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        if "phases" in d:
            d["phases"] = tuple(PhaseConfig.from_dict(p) for p in d["phases"])
        if "canvas_zyx" in d:
            d["canvas_zyx"] = tuple(d["canvas_zyx"])
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        return cls(**d)

    def with_epochs(self, epochs: int) -> TrainConfig:
        """Same config with the first phase's epochs replaced (the common CLI override)."""
        phases = (replace(self.phases[0], epochs=int(epochs)),) + tuple(self.phases[1:])
        return replace(self, phases=phases)


# ----------------------------------------------------------------------------------------------
# Small helpers


def phase_lr(phase: PhaseConfig, step: int, total_steps: int) -> float:
    """One-cycle cosine: lr/25 -> lr over the warm-up fraction, then cosine down to lr/1e4.

    A pure function of the step, so resuming (even with a changed epoch count) needs no state.
    """
    total = max(1, total_steps)
    warm = max(1, int(round(phase.warmup * total)))
    start, peak, end = phase.lr / 25.0, phase.lr, phase.lr / 1e4
    if step < warm:
        t = step / warm
        return start + (peak - start) * (1 - math.cos(math.pi * t)) / 2
    t = min(1.0, (step - warm) / max(1, total - warm))
    return end + (peak - end) * (1 + math.cos(math.pi * t)) / 2


class EMA:
    """Exponential moving average of a model's weights (decay ramps up over the first steps)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    write_csv(path, rows, columns, _fmt)


def _fmt(v):
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.6g}"
    return v


def _state_copy(model: torch.nn.Module) -> dict:
    """Plain contiguous CPU copies (best.pt must not depend on the training memory format)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Batches, prediction, metrics


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


def selection_score(history: list[dict], cfg: TrainConfig) -> float:
    """Smoothed criterion of the last epoch in ``history``: it damps single-epoch AUROC spikes."""
    window = [h["val_auroc"] for h in history[-cfg.select_window :]]
    finite = [a for a in window if np.isfinite(a)]
    score = float(np.mean(finite)) if finite else 0.0
    last = history[-1]
    if np.isfinite(last.get("val_dice", math.nan)):
        score += cfg.select_dice_weight * last["val_dice"]
    if np.isfinite(last.get("val_mae", math.nan)):
        score -= cfg.select_mae_weight * last["val_mae"]
    return score


# ----------------------------------------------------------------------------------------------
# One fold


def _phase_schedule(cfg: TrainConfig) -> list[tuple[int, int]]:
    """(phase index, epoch within phase) of every global epoch."""
    return [(p, e) for p, ph in enumerate(cfg.phases) for e in range(ph.epochs)]


def _init_manifest(cfg: TrainConfig):
    """The manifest of ``cfg.init_from``, refused unless its network, VOI and attributes are the
    run's own (weights of another layout would not load, another VOI would be silently wrong)."""
    from ..core.ensemble import Manifest

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

    Read through core/ensemble.py's sha256 check and ``weights_only`` loading, like inference.
    """
    from ..core.ensemble import load_verified_state

    directory = Path(cfg.init_from)
    manifest = _init_manifest(cfg)
    entry = _fold_entry(manifest, fold, directory)
    state = load_verified_state(directory / entry["file"], entry["sha256"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    info = {"path": str(directory), "version": manifest.version, "fold": fold}
    return state, info | {"file": entry["file"], "sha256": entry["sha256"]}


def _new_model(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    model = build_network(cfg.network).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def _make_optimizer(model: torch.nn.Module, phase: PhaseConfig, cfg: TrainConfig):
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f) for f in phase.freeze))
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=phase.lr / 25.0, weight_decay=cfg.weight_decay)


def _phase_mask(phase: PhaseConfig) -> torch.Tensor:
    unknown = set(phase.attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"phase {phase.name}: unknown attributes {sorted(unknown)}")
    return torch.tensor([a in phase.attributes for a in ATTRIBUTES])


def _train_indices_for_phase(
    phase: PhaseConfig,
    fold: int,
    data: TrainingData,
    folds: dict[str, int],
    phase_data: dict[str, TrainingData],
) -> tuple[TrainingData, np.ndarray]:
    """Training set of a phase: the main data's other folds, or another folder's nodules
    (minus any patient of the held-out fold, in case the cohorts overlap), restricted to the
    confidently rated ones when the phase says so (``malignancy_confident``)."""
    if phase.data is None:
        src = data
        idx = [i for i, p in enumerate(data.patient_ids) if folds[p] != fold]
    else:
        src = phase_data[phase.data]
        idx = [i for i, p in enumerate(src.patient_ids) if folds.get(p, -1) != fold]
    idx = np.asarray(idx, dtype=int)
    if phase.malignancy_confident is not None:
        low, high = phase.malignancy_confident
        mean = np.array([src.records[i].malignancy_mean for i in idx], dtype=float)
        idx = idx[(mean <= low) | (mean >= high)]  # NaN (unrated) compares False: dropped
    return src, idx


def _epoch_order(n: int, labels: np.ndarray, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    if not balanced:
        return torch.randperm(n, generator=gen)
    # Class-balanced: benign, malignant and indeterminate/unknown drawn equally often.
    groups = np.where(np.isfinite(labels), labels, 2).astype(int)
    counts = np.bincount(groups, minlength=3).astype(float)
    w = 1.0 / counts[groups]
    return torch.multinomial(torch.as_tensor(w), n, replacement=True, generator=gen)


def _silent(_: str) -> None:
    """The echo of ranks other than 0 (one log per run)."""


def _global_parts(parts: dict[str, float], share: float, dist: DistContext) -> dict[str, float]:
    """The loss parts of the whole batch: each rank's part is its shard's share times world."""
    keys = list(parts)
    values = torch.tensor([parts[k] * share for k in keys], dtype=torch.float64)
    summed = dist.all_reduce_sum(values).tolist()
    return {k: v / dist.world for k, v in zip(keys, summed, strict=True)}


def _train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batcher: Batcher,
    idx: np.ndarray,
    phase: PhaseConfig,
    active: torch.Tensor,
    weights: LossWeights,
    gen: torch.Generator,
    cfg: TrainConfig,
    dist: DistContext,
) -> dict[str, float]:
    """One optimiser step on the global batch ``idx``; the loss parts of the whole batch.

    Under torchrun this process computes only its rows of the batch; the loss's denominators
    are the global ones, so DDP's gradient average is the full-batch gradient (docs/DESIGN.md
    §13).
    """
    rows, share = shard_rows(len(idx), dist.rank, dist.world) if dist.enabled else (None, 1.0)
    b = batcher.batch(idx, cfg.augment, gen, train=True, rows=rows)
    b["attribute_mask"] = b["attribute_mask"] & active
    if not phase.segmentation:
        b.pop("seg")
    norm = None
    if dist.enabled:
        norm = Normalisers.from_counts(dist.all_reduce_sum(loss_counts(b) * share), dist.world)
    device = batcher.device
    with torch.autocast(device.type, enabled=device.type == "cuda", dtype=torch.float16):
        out = net(b["x"], with_seg=phase.segmentation)
    out = {k: (v.float() if torch.is_tensor(v) else [t.float() for t in v]) for k, v in out.items()}
    loss, parts = multitask_loss(out, b, weights, norm)
    if share != 1.0:  # a rank without rows joins the all-reduce with a zero gradient
        loss = loss * share
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return _global_parts(parts, share, dist) if dist.enabled else parts


def train_fold(
    fold: int,
    config: TrainConfig,
    data: TrainingData,
    out_dir: str | os.PathLike,
    resume: bool = True,
    folds: dict[str, int] | None = None,
    phase_data: dict[str, TrainingData] | None = None,
    echo: Callable[[str], None] = print,
    dist: DistContext = SINGLE,
) -> dict:
    """Train fold ``fold`` into ``<out_dir>/fold<k>``; returns its summary.

    Resumes from the checkpoint of the last finished epoch when ``resume`` (a finished fold is
    not retrained). Writes history.csv every epoch and oof.csv, best.pt, summary.json at the end.
    Under torchrun (``dist``) every rank trains its shard of each batch and only rank 0
    validates and writes (docs/DESIGN.md §13).
    """
    cfg = config
    check_batch_size(cfg.batch_size, dist.world)
    echo = echo if dist.is_main else _silent
    fold_dir = Path(out_dir) / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    folds = folds if folds is not None else load_folds(DEFAULT_FOLDS_FILE)
    phase_data = phase_data or {}
    torch.set_num_threads(int(cfg.threads))
    device = dist.device(resolve_device(cfg.device))
    ckpt_path = fold_dir / CHECKPOINT
    dist.barrier()  # every rank sees the same files when it decides whether to resume
    fresh = not (resume and ckpt_path.is_file() and (fold_dir / CONFIG).is_file())
    init, init_info = (None, None) if cfg.init_from is None else init_state(cfg, fold)
    if fresh and dist.is_main:
        # Provenance of the run that trains the fold; a resumed or finished fold keeps its own.
        extra = {} if init_info is None else {"init_from": init_info}
        _write_json(
            fold_dir / CONFIG, _run_info(cfg, data, fold=fold, processes=dist.world, **extra)
        )

    val_idx = np.asarray([i for i, p in enumerate(data.patient_ids) if folds[p] == fold], int)
    val_batcher = Batcher(data, cfg.voi, device, cfg.channels_last)
    batchers = {None: val_batcher}
    for ph in cfg.phases:
        if ph.data is not None and ph.data not in batchers:
            batchers[ph.data] = Batcher(phase_data[ph.data], cfg.voi, device, cfg.channels_last)

    torch.manual_seed(cfg.seed + fold)
    model = _new_model(cfg, device)
    if init is not None:  # before the EMA copy: the average starts at these weights too
        model.load_state_dict(init)
        echo(f"fold {fold}: initialised from {init_info['path']} ({init_info['version']})")
    ema = EMA(model, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed * 100 + fold)
    schedule = _phase_schedule(cfg)
    state = {"epoch": 0, "history": [], "best_score": -math.inf, "best_epoch": -1}
    best_state = None
    optimizer, opt_phase, elapsed = None, -1, 0.0
    net, net_phase = model, -1

    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["network"] != cfg.network.to_dict() or ckpt["voi"] != cfg.voi.to_dict():
            raise ValueError(
                f"{ckpt_path} was trained with another network/VOI configuration; "
                "use --no-resume or another --run-dir."
            )
        model.load_state_dict(ckpt["model"])
        ema.model.load_state_dict(ckpt["ema"])
        ema.updates = int(ckpt["ema_updates"])
        best_state = ckpt["best_state"]
        state = {k: ckpt[k] for k in ("epoch", "history", "best_score", "best_epoch")}
        elapsed = float(ckpt["elapsed"])
        gen.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if state["epoch"] < len(schedule) and ckpt["phase"] == schedule[state["epoch"]][0]:
            optimizer = _make_optimizer(model, cfg.phases[ckpt["phase"]], cfg)
            optimizer.load_state_dict(ckpt["optimizer"])
            opt_phase = ckpt["phase"]
        echo(f"fold {fold}: resuming after epoch {state['epoch']} from {ckpt_path}")
        if state["epoch"] >= len(schedule) and (fold_dir / OOF).is_file():
            if (fold_dir / BEST).is_file() and (fold_dir / SUMMARY).is_file():
                echo(f"fold {fold}: already finished")
                if dist.is_main:
                    refresh_oof(fold_dir, cfg, val_batcher, data, val_idx, fold, echo)
                dist.barrier()
                return json.loads((fold_dir / SUMMARY).read_text())

    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    for epoch in range(state["epoch"], len(schedule)):
        p_idx, e_in_phase = schedule[epoch]
        phase = cfg.phases[p_idx]
        src, train_idx = _train_indices_for_phase(phase, fold, data, folds, phase_data)
        if len(train_idx) == 0:
            raise ValueError(f"fold {fold}, phase {phase.name}: no training nodules")
        if net_phase != p_idx:
            echo(f"fold {fold} phase {phase.name}: {len(train_idx)} training nodules")
        if optimizer is None or opt_phase != p_idx:
            optimizer, opt_phase = _make_optimizer(model, phase, cfg), p_idx
        if net_phase != p_idx:  # DDP records the trained parameters when it is built
            net, net_phase = wrap_model(model, dist, device, not phase.segmentation), p_idx
        weights = LossWeights.from_any({**cfg.loss, **phase.loss_weights})
        active = _phase_mask(phase).to(device)
        batcher = batchers[phase.data]
        steps = max(1, math.ceil(len(train_idx) / cfg.batch_size))
        total_steps = steps * phase.epochs
        t0 = time.perf_counter()
        net.train()
        order = _epoch_order(len(train_idx), src.labels[train_idx], cfg.balanced_sampling, gen)
        sums: dict[str, float] = {}
        seen = 0
        for s in range(steps):
            lr = phase_lr(phase, e_in_phase * steps + s, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = train_idx[order[s * cfg.batch_size : (s + 1) * cfg.batch_size].numpy()]
            parts = _train_step(
                net, optimizer, scaler, batcher, idx, phase, active, weights, gen, cfg, dist
            )
            ema.update(model)
            n = len(idx)
            seen += n
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
        train_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        metrics = None
        if dist.is_main:  # the other ranks wait in the broadcast
            metrics = _validate(ema.model, val_batcher, data, val_idx, cfg)
        val_s = time.perf_counter() - t1
        # Rank 0's numbers everywhere: every rank then makes the same selection.
        metrics, train_s, val_s = dist.broadcast((metrics, train_s, val_s))
        row = {
            "epoch": epoch + 1,
            "phase": phase.name,
            "lr": lr,
            **{f"train_{k}": v / max(1, seen) for k, v in sums.items()},
            **metrics,
            "train_seconds": train_s,
            "val_seconds": val_s,
            "epoch_seconds": train_s + val_s,
        }
        state["history"].append(row)
        row["score"] = selection_score(state["history"], cfg)
        eligible = epoch + 1 >= min(cfg.select_window, len(schedule))
        if eligible and row["score"] > state["best_score"]:
            state["best_score"], state["best_epoch"] = row["score"], epoch + 1
            best_state = _state_copy(ema.model)
        row["best_epoch"] = state["best_epoch"]
        state["epoch"] = epoch + 1
        elapsed += train_s + val_s
        if not dist.is_main:
            continue
        _atomic_save(
            {
                "model": model.state_dict(),
                "ema": ema.model.state_dict(),
                "ema_updates": ema.updates,
                "optimizer": optimizer.state_dict(),
                "phase": p_idx,
                "best_state": best_state,
                "elapsed": elapsed,
                "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state()},
                "network": cfg.network.to_dict(),
                "voi": cfg.voi.to_dict(),
                **state,
            },
            ckpt_path,
        )
        _write_csv(fold_dir / HISTORY, state["history"], _history_columns(state["history"]))
        echo(
            f"fold {fold} epoch {epoch + 1}/{len(schedule)} [{phase.name}] "
            f"loss {row.get('train_total', math.nan):.4f} | val AUROC {metrics['val_auroc']:.3f} "
            f"MAE {metrics['val_mae']:.3f} Dice {metrics['val_dice']:.3f} | "
            f"{train_s:.1f}+{val_s:.1f} s"
        )

    if best_state is None:
        best_state = _state_copy(ema.model)
    summary = None
    if dist.is_main:
        phase_sizes = {  # a filtered phase (malignancy_confident) trains on fewer nodules
            ph.name: int(len(_train_indices_for_phase(ph, fold, data, folds, phase_data)[1]))
            for ph in cfg.phases
        }
        summary = _finish_fold(
            fold_dir, fold, cfg, best_state, val_batcher, data, val_idx, state, elapsed, phase_sizes
        )
        echo(
            f"fold {fold} done: best epoch {summary['best_epoch']}, OOF AUROC "
            f"{summary['oof_auroc']:.3f}, {elapsed / 60:.1f} min"
        )
    return dist.broadcast(summary)


def _validate(
    model: torch.nn.Module, batcher: Batcher, data: TrainingData, val_idx: np.ndarray, cfg
) -> dict:
    """Validation metrics of the EMA weights on the held-out fold (NaN when it is empty)."""
    if len(val_idx):
        pred = predict(model, batcher, val_idx, cfg.eval_batch_size)
        return validation_metrics(pred, data, val_idx)
    return dict.fromkeys(("val_auroc", "val_mae", "val_dice", "val_loss"), math.nan)


def _finish_fold(
    fold_dir: Path,
    fold: int,
    cfg: TrainConfig,
    best_state: dict,
    val_batcher: Batcher,
    data: TrainingData,
    val_idx: np.ndarray,
    state: dict,
    elapsed: float,
    phase_sizes: dict[str, int] | None = None,
) -> dict:
    """best.pt, oof.csv and summary.json of a trained fold; returns the summary."""
    torch.save(best_state, fold_dir / BEST)
    final = _new_model(cfg, val_batcher.device)
    final.load_state_dict(best_state)
    oof_rows = write_oof(final, val_batcher, data, val_idx, fold, fold_dir / OOF, cfg)
    summary = {
        "fold": fold,
        "epochs": cfg.total_epochs,
        "best_epoch": state["best_epoch"],
        "best_score": state["best_score"],
        "train_seconds": elapsed,
        "seconds_per_epoch": elapsed / max(1, len(state["history"])),
        "n_train": int(len(data) - len(val_idx)),
        "n_train_per_phase": phase_sizes or {},
        "n_val": int(len(val_idx)),
        **oof_metrics(oof_rows),
    }
    _write_json(fold_dir / SUMMARY, summary)
    return summary


def _history_columns(history: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in history:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


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
    _write_csv(path, rows, OOF_COLUMNS)
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
    model = _new_model(cfg, batcher.device)
    model.load_state_dict(torch.load(fold_dir / BEST, map_location="cpu", weights_only=True))
    write_oof(model, batcher, data, indices, fold, fold_dir / OOF, cfg)
    echo(f"fold {fold}: out-of-fold table rewritten with the current columns from {BEST}")


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def oof_metrics(rows: list[dict]) -> dict:
    """Summary numbers of OOF rows (works on freshly made rows and on rows read from CSV)."""
    label = np.array([_num(r["label"]) for r in rows])
    prob = np.array([_num(r["malignancy_prob"]) for r in rows])
    vol = np.array([_num(r["seg_volume_mm3"]) for r in rows])
    diam = np.array([_num(r["diameter_mean_mm"]) for r in rows])
    dice = np.array([_num(r["dice"]) for r in rows])
    mae = {}
    for a in ORDINAL_ATTRIBUTES:
        t = np.array([_num(r[f"{a}_target"]) for r in rows])
        p = np.array([_num(r[f"{a}_prob"]) for r in rows])
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


# ----------------------------------------------------------------------------------------------
# Run info, the whole K-fold run, export


def _write_json(path: Path, obj) -> None:
    write_json(path, _finite_json(obj), default=_json_default)


def _finite_json(o):
    """NaN/inf -> None, recursively (the manifest must stay strict JSON)."""
    if isinstance(o, dict):
        return {k: _finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_json(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _run_info(cfg: TrainConfig, data: TrainingData, **extra) -> dict:
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
    from ..core.folds import ensure_folds
    from .dataset import load_records

    check_batch_size(config.batch_size, dist.world)
    echo = echo if dist.is_main else _silent
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
    info = _run_info(
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
    _write_json(run_dir / CONFIG, info)


def _read_oof(path: Path) -> list[dict]:
    return read_csv(path)


def _finished_folds(run_dir: Path) -> list[Path]:
    return sorted(
        (d for d in run_dir.glob("fold*") if (d / BEST).is_file() and (d / OOF).is_file()),
        key=lambda d: int(d.name[4:]),
    )


def pool_oof(run_dir: str | os.PathLike) -> list[dict]:
    """Concatenate the finished folds' oof.csv into ``<run_dir>/oof.csv`` (evaluation reads it)."""
    run_dir = Path(run_dir)
    rows = [r for d in _finished_folds(run_dir) for r in _read_oof(d / OOF)]
    if rows:
        _write_csv(run_dir / OOF, rows, OOF_COLUMNS)
    return rows


def export_ensemble(
    run_dir: str | os.PathLike,
    models_dir: str | os.PathLike,
    echo: Callable[[str], None] = print,
) -> dict:
    """Write the finished folds of a run as an ensemble (fp16 weights + manifest) with fusion.

    The fusion (fusion.py: each head with the measured size and density) is fitted on the pooled
    OOF rows, which are also written to ``<run_dir>/oof.csv``.
    """
    from ..core.ensemble import save_ensemble
    from ..core.fusion import (
        MALIGNANCY_PROBABILITY,
        MEASURED_COLUMNS,
        apply_fusion,
        fit_fusion,
        fusion_oof,
        oof_fusion_inputs,
    )

    run_dir = Path(run_dir)
    info = json.loads((run_dir / CONFIG).read_text())
    cfg = TrainConfig.from_dict(info["train"])
    fold_dirs = _finished_folds(run_dir)
    if not fold_dirs:
        raise FileNotFoundError(f"No finished fold (best.pt + oof.csv) in {run_dir}.")
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
    table = {c: np.array([_num(r[c]) for r in rows]) for c in present}
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
        extra=_finite_json(extra),
        fold_ids=[f["fold"] for f in per_fold],
    )
    echo(
        f"exported {len(models)} fold(s) as {version} to {models_dir} "
        f"(OOF AUROC {metrics['oof_auroc']:.3f})"
    )
    return manifest.to_dict()
