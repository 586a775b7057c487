"""One fold's training as named steps: set up, resume, run an epoch (train, validate, select,
checkpoint), finish.

One fold = :func:`train_fold`: multi-task loss, AdamW with a one-cycle cosine schedule per
curriculum phase, gradient clipping, an EMA of the weights (validated every epoch on the held-out
patients, exported), a checkpoint after every epoch (``kill -9`` then rerun continues at the
next epoch), ``history.csv``, ``oof.csv`` and ``best.pt``. Under torchrun every rank trains its
shard of each batch and only rank 0 validates and writes (docs/DESIGN.md §13).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..core.device import resolve_device
from ..core.model.folds import DEFAULT_FOLDS_FILE, load_folds
from .batches import Batcher, predict, validation_metrics
from .config import PhaseConfig, TrainConfig
from .dataset import TrainingData
from .distributed import SINGLE, DistContext, check_batch_size, wrap_model
from .init_from import init_state
from .losses import LossWeights
from .oof import oof_metrics, refresh_oof, write_oof
from .optimization import EMA, epoch_order, make_optimizer, phase_lr, phase_mask, train_step
from .run_files import (
    BEST,
    CHECKPOINT,
    CONFIG,
    HISTORY,
    OOF,
    SUMMARY,
    atomic_save,
    run_info,
    write_run_json,
    write_table,
)


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
    training = FoldTraining(fold, config, data, out_dir, resume, folds, phase_data, echo, dist)
    if resume and training.checkpoint_path.is_file():
        finished = training.resume()
        if finished is not None:
            return finished
    for epoch in range(training.state["epoch"], len(training.schedule)):
        training.run_epoch(epoch)
    return training.finish()


class FoldTraining:
    """One fold between epochs (model, EMA, the phase's optimizer, generator, history) and the
    steps that move it on.

    Why a class: every step reads and changes that state, and the checkpoint holds exactly it.
    The checkpoint's keys are a contract: runs started by earlier code resume with this one.
    """

    def __init__(
        self,
        fold: int,
        cfg: TrainConfig,
        data: TrainingData,
        out_dir: str | os.PathLike,
        resume: bool,
        folds: dict[str, int] | None,
        phase_data: dict[str, TrainingData] | None,
        echo: Callable[[str], None],
        dist: DistContext,
    ) -> None:
        check_batch_size(cfg.batch_size, dist.world)
        self.fold, self.cfg, self.data, self.dist = fold, cfg, data, dist
        self.echo = echo if dist.is_main else silent
        self.fold_dir = Path(out_dir) / f"fold{fold}"
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        self.folds = folds if folds is not None else load_folds(DEFAULT_FOLDS_FILE)
        self.phase_data = phase_data or {}
        torch.set_num_threads(int(cfg.threads))
        self.device = dist.device(resolve_device(cfg.device))
        self.checkpoint_path = self.fold_dir / CHECKPOINT
        dist.barrier()  # every rank sees the same files when it decides whether to resume
        fresh = not (
            resume and self.checkpoint_path.is_file() and (self.fold_dir / CONFIG).is_file()
        )
        init, init_info = (None, None) if cfg.init_from is None else init_state(cfg, fold)
        if fresh and dist.is_main:
            # Provenance of the run that trains the fold; a resumed or finished fold keeps its own.
            extra = {} if init_info is None else {"init_from": init_info}
            write_run_json(
                self.fold_dir / CONFIG,
                run_info(cfg, data, fold=fold, processes=dist.world, **extra),
            )
        self._make_batchers()
        self._start_model(init, init_info)

    def _make_batchers(self) -> None:
        """The held-out fold's batcher (main data) and one per other phase data folder."""
        cfg, data = self.cfg, self.data
        self.val_idx = np.asarray(
            [i for i, p in enumerate(data.patient_ids) if self.folds[p] == self.fold], int
        )
        self.val_batcher = Batcher(data, cfg.voi, self.device, cfg.channels_last)
        self.batchers = {None: self.val_batcher}
        for ph in cfg.phases:
            if ph.data is not None and ph.data not in self.batchers:
                self.batchers[ph.data] = Batcher(
                    self.phase_data[ph.data], cfg.voi, self.device, cfg.channels_last
                )

    def _start_model(self, init: dict | None, init_info: dict | None) -> None:
        """The seeded model (or ``init_from``'s fold weights), its EMA and a fresh state."""
        cfg, fold = self.cfg, self.fold
        torch.manual_seed(cfg.seed + fold)
        self.model = cfg.build_model(self.device)
        if init is not None:  # before the EMA copy: the average starts at these weights too
            self.model.load_state_dict(init)
            self.echo(f"fold {fold}: initialised from {init_info['path']} ({init_info['version']})")
        self.ema = EMA(self.model, cfg.ema_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed * 100 + fold)
        self.schedule = phase_schedule(cfg)
        self.state = {"epoch": 0, "history": [], "best_score": -math.inf, "best_epoch": -1}
        self.best_state = None
        self.optimizer, self.opt_phase, self.elapsed = None, -1, 0.0
        self.net, self.net_phase = self.model, -1
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")

    # -- resume ---------------------------------------------------------------------------------

    def resume(self) -> dict | None:
        """Continue after the checkpoint's epoch; the fold's summary when it is already finished."""
        cfg, path = self.cfg, self.checkpoint_path
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt["network"] != cfg.network.to_dict() or ckpt["voi"] != cfg.voi.to_dict():
            raise ValueError(
                f"{path} was trained with another network/VOI configuration; "
                "use --no-resume or another --run-dir."
            )
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.ema.updates = int(ckpt["ema_updates"])
        self.best_state = ckpt["best_state"]
        self.state = {k: ckpt[k] for k in ("epoch", "history", "best_score", "best_epoch")}
        self.elapsed = float(ckpt["elapsed"])
        self.gen.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        epoch = self.state["epoch"]
        if epoch < len(self.schedule) and ckpt["phase"] == self.schedule[epoch][0]:
            self.optimizer = make_optimizer(self.model, cfg.phases[ckpt["phase"]], cfg)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.opt_phase = ckpt["phase"]
        self.echo(f"fold {self.fold}: resuming after epoch {epoch} from {path}")
        return self._finished_summary()

    def _finished_summary(self) -> dict | None:
        """A finished fold's summary (its oof.csv refreshed to the current columns), else None."""
        d = self.fold_dir
        if self.state["epoch"] < len(self.schedule) or not (d / OOF).is_file():
            return None
        if not ((d / BEST).is_file() and (d / SUMMARY).is_file()):
            return None
        self.echo(f"fold {self.fold}: already finished")
        if self.dist.is_main:
            refresh_oof(
                d, self.cfg, self.val_batcher, self.data, self.val_idx, self.fold, self.echo
            )
        self.dist.barrier()
        return json.loads((d / SUMMARY).read_text())

    # -- one epoch ------------------------------------------------------------------------------

    def run_epoch(self, epoch: int) -> None:
        """Train, validate, select and (rank 0) checkpoint one epoch."""
        phase_index = self.schedule[epoch][0]
        lr, train_losses, train_s = self.train_epoch(epoch)
        metrics, train_s, val_s = self.validate(train_s)
        row = self.record(epoch, lr, train_losses, metrics, train_s, val_s)
        if not self.dist.is_main:
            return
        self.checkpoint(phase_index)
        self.echo(
            f"fold {self.fold} epoch {epoch + 1}/{len(self.schedule)} [{row['phase']}] "
            f"loss {row.get('train_total', math.nan):.4f} | val AUROC {metrics['val_auroc']:.3f} "
            f"MAE {metrics['val_mae']:.3f} Dice {metrics['val_dice']:.3f} | "
            f"{train_s:.1f}+{val_s:.1f} s"
        )

    def _enter_phase(self, epoch: int) -> tuple[PhaseConfig, TrainingData, np.ndarray]:
        """The epoch's phase and training nodules; a new phase gets its optimizer and DDP wrap."""
        p_idx = self.schedule[epoch][0]
        phase = self.cfg.phases[p_idx]
        src, train_idx = train_indices_for_phase(
            phase, self.fold, self.data, self.folds, self.phase_data
        )
        if len(train_idx) == 0:
            raise ValueError(f"fold {self.fold}, phase {phase.name}: no training nodules")
        if self.net_phase != p_idx:
            self.echo(f"fold {self.fold} phase {phase.name}: {len(train_idx)} training nodules")
        if self.optimizer is None or self.opt_phase != p_idx:
            self.optimizer, self.opt_phase = make_optimizer(self.model, phase, self.cfg), p_idx
        if self.net_phase != p_idx:  # DDP records the trained parameters when it is built
            wrapped = wrap_model(self.model, self.dist, self.device, not phase.segmentation)
            self.net, self.net_phase = wrapped, p_idx
        return phase, src, train_idx

    def train_epoch(self, epoch: int) -> tuple[float, dict[str, float], float]:
        """One pass over the phase's training nodules: (last lr, mean loss parts, seconds)."""
        cfg = self.cfg
        phase, src, train_idx = self._enter_phase(epoch)
        e_in_phase = self.schedule[epoch][1]
        weights = LossWeights.from_any({**cfg.loss, **phase.loss_weights})
        active = phase_mask(phase).to(self.device)
        batcher = self.batchers[phase.data]
        steps = max(1, math.ceil(len(train_idx) / cfg.batch_size))
        total_steps = steps * phase.epochs
        t0 = time.perf_counter()
        self.net.train()
        order = epoch_order(len(train_idx), src.labels[train_idx], cfg.balanced_sampling, self.gen)
        sums: dict[str, float] = {}
        seen = 0
        for s in range(steps):
            lr = phase_lr(phase, e_in_phase * steps + s, total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            idx = train_idx[order[s * cfg.batch_size : (s + 1) * cfg.batch_size].numpy()]
            parts = train_step(
                self.net, self.optimizer, self.scaler, batcher, idx, phase, active, weights,
                self.gen, cfg, self.dist,
            )  # fmt: skip
            self.ema.update(self.model)
            n = len(idx)
            seen += n
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
        train_s = time.perf_counter() - t0
        return lr, {f"train_{k}": v / max(1, seen) for k, v in sums.items()}, train_s

    def validate(self, train_s: float) -> tuple[dict, float, float]:
        """Rank 0 validates the EMA weights; every rank gets its metrics and both timings."""
        t1 = time.perf_counter()
        metrics = None
        if self.dist.is_main:  # the other ranks wait in the broadcast
            metrics = validate_ema(
                self.ema.model, self.val_batcher, self.data, self.val_idx, self.cfg
            )
        val_s = time.perf_counter() - t1
        # Rank 0's numbers everywhere: every rank then makes the same selection.
        return self.dist.broadcast((metrics, train_s, val_s))

    def record(self, epoch, lr, train_losses, metrics, train_s, val_s) -> dict:
        """The epoch's history row; keeps the EMA weights when the selection score improves."""
        state = self.state
        row = {
            "epoch": epoch + 1,
            "phase": self.cfg.phases[self.schedule[epoch][0]].name,
            "lr": lr,
            **train_losses,
            **metrics,
            "train_seconds": train_s,
            "val_seconds": val_s,
            "epoch_seconds": train_s + val_s,
        }
        state["history"].append(row)
        row["score"] = selection_score(state["history"], self.cfg)
        eligible = epoch + 1 >= min(self.cfg.select_window, len(self.schedule))
        if eligible and row["score"] > state["best_score"]:
            state["best_score"], state["best_epoch"] = row["score"], epoch + 1
            self.best_state = state_copy(self.ema.model)
        row["best_epoch"] = state["best_epoch"]
        state["epoch"] = epoch + 1
        self.elapsed += train_s + val_s
        return row

    def checkpoint(self, phase_index: int) -> None:
        """checkpoint.pt (everything a resume needs, written atomically) and history.csv."""
        cfg, state = self.cfg, self.state
        atomic_save(
            {
                "model": self.model.state_dict(),
                "ema": self.ema.model.state_dict(),
                "ema_updates": self.ema.updates,
                "optimizer": self.optimizer.state_dict(),
                "phase": phase_index,
                "best_state": self.best_state,
                "elapsed": self.elapsed,
                "rng": {"generator": self.gen.get_state(), "torch": torch.get_rng_state()},
                "network": cfg.network.to_dict(),
                "voi": cfg.voi.to_dict(),
                **state,
            },
            self.checkpoint_path,
        )
        write_table(self.fold_dir / HISTORY, state["history"], history_columns(state["history"]))

    # -- finish ---------------------------------------------------------------------------------

    def finish(self) -> dict:
        """best.pt, oof.csv and summary.json (rank 0); every rank returns the summary."""
        if self.best_state is None:
            self.best_state = state_copy(self.ema.model)
        summary = None
        if self.dist.is_main:
            summary = self._write_results()
            self.echo(
                f"fold {self.fold} done: best epoch {summary['best_epoch']}, OOF AUROC "
                f"{summary['oof_auroc']:.3f}, {self.elapsed / 60:.1f} min"
            )
        return self.dist.broadcast(summary)

    def _write_results(self) -> dict:
        """best.pt, oof.csv and summary.json of the trained fold; returns the summary."""
        cfg, data, fold, fold_dir = self.cfg, self.data, self.fold, self.fold_dir
        phase_sizes = {  # a filtered phase (malignancy_confident) trains on fewer nodules
            ph.name: int(
                len(train_indices_for_phase(ph, fold, data, self.folds, self.phase_data)[1])
            )
            for ph in cfg.phases
        }
        torch.save(self.best_state, fold_dir / BEST)
        final = cfg.build_model(self.val_batcher.device)
        final.load_state_dict(self.best_state)
        oof_rows = write_oof(final, self.val_batcher, data, self.val_idx, fold, fold_dir / OOF, cfg)
        summary = {
            "fold": fold,
            "epochs": cfg.total_epochs,
            "best_epoch": self.state["best_epoch"],
            "best_score": self.state["best_score"],
            "train_seconds": self.elapsed,
            "seconds_per_epoch": self.elapsed / max(1, len(self.state["history"])),
            "n_train": int(len(data) - len(self.val_idx)),
            "n_train_per_phase": phase_sizes,
            "n_val": int(len(self.val_idx)),
            **oof_metrics(oof_rows),
        }
        write_run_json(fold_dir / SUMMARY, summary)
        return summary


def validate_ema(
    model: torch.nn.Module, batcher: Batcher, data: TrainingData, val_idx: np.ndarray, cfg
) -> dict:
    """Validation metrics of the EMA weights on the held-out fold (NaN when it is empty)."""
    if len(val_idx):
        pred = predict(model, batcher, val_idx, cfg.eval_batch_size)
        return validation_metrics(pred, data, val_idx)
    return dict.fromkeys(("val_auroc", "val_mae", "val_dice", "val_loss"), math.nan)


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


def phase_schedule(cfg: TrainConfig) -> list[tuple[int, int]]:
    """(phase index, epoch within phase) of every global epoch."""
    return [(p, e) for p, ph in enumerate(cfg.phases) for e in range(ph.epochs)]


def train_indices_for_phase(
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


def silent(_: str) -> None:
    """The echo of ranks other than 0 (one log per run)."""


def state_copy(model: torch.nn.Module) -> dict:
    """Plain contiguous CPU copies (best.pt must not depend on the training memory format)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def history_columns(history: list[dict]) -> list[str]:
    """Every column of the history rows, in first-seen order (a phase may add loss parts)."""
    cols: list[str] = []
    for r in history:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols
