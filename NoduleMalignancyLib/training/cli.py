"""``nodule-malignancy train``: K-fold training (resumable) and optional ensemble export."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from ..core.model.folds import DEFAULT_FOLDS_FILE
from ..core.settings import DATA_ENV

# Without --config, `train` runs the recipe of the shipped ensemble (models/MODEL_CARD.md; equal
# to docs/experiments/head_dropout_entropy_0.01_gate_band_60.json, which a test checks): the
# light preset with dropout 0.2 in the gate and instance heads, 60 epochs, plain BCE, the gate
# entropy maximised at 0.01 and the gate-band hinge at 0.1. On 2 CPU cores a fold takes about
# 41 min with two processes side by side (one thread each), 53 min with three.
DEFAULT_WIDTH = "light"
DEFAULT_EPOCHS = 60
SHIPPED_HEAD_DROPOUT = 0.2
SHIPPED_LOSS_WEIGHTS = {"focal_gamma": 0.0, "gate": -0.01, "gate_band": 0.1}


def _fold_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected e.g. 0,1,2,3,4, got {text!r}") from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the main CLI's sub-parsers."""
    from .config import WIDTH_PRESETS

    sp = subparsers.add_parser("train", help="train the K-fold ensemble (resumable)")
    sp.add_argument(
        "--data", default=None, help=f"folder containing lidc_vois/ (default ${DATA_ENV})"
    )
    sp.add_argument("--name", default=None, help="run name (default: date and time)")
    sp.add_argument("--run-dir", default=None, help="output folder (default runs/<name>)")
    sp.add_argument("--folds", type=_fold_list, default=None, help="folds to train, e.g. 0,1,2,3,4")
    sp.add_argument("--folds-file", default=str(DEFAULT_FOLDS_FILE), help="patient_id,fold CSV")
    sp.add_argument("--epochs", type=int, default=None, help=f"epochs (default {DEFAULT_EPOCHS})")
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--lr", type=float, default=None, help="peak learning rate of phase 1")
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    sp.add_argument(
        "--width",
        choices=sorted(WIDTH_PRESETS),
        default=None,
        help=f"network width preset (default {DEFAULT_WIDTH})",
    )
    sp.add_argument("--config", default=None, help="JSON file of TrainConfig fields (phases...)")
    sp.add_argument(
        "--init-from",
        default=None,
        help="ensemble folder (e.g. models/): fold k starts from its fold-k weights",
    )
    sp.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    sp.add_argument("--export-to", default=None, help="write the ensemble here, e.g. models/")
    sp.add_argument("--cache-dir", default=None, help="canvas cache folder")
    sp.add_argument("--limit", type=int, default=None, help="first N nodules only (smoke runs)")
    sp.add_argument("--balanced", action="store_true", help="class-balanced sampling")
    sp.add_argument("--device", default=None, help="auto, cpu or cuda")
    sp.set_defaults(func=cmd_train)


def shipped_recipe():
    """The TrainConfig of the shipped ensemble's recipe (the default of ``train``)."""
    from .config import WIDTH_PRESETS, TrainConfig

    network = replace(WIDTH_PRESETS[DEFAULT_WIDTH], head_dropout=SHIPPED_HEAD_DROPOUT)
    cfg = TrainConfig(network=network).with_epochs(DEFAULT_EPOCHS)
    first = replace(cfg.phases[0], loss_weights=dict(SHIPPED_LOSS_WEIGHTS))
    return replace(cfg, phases=(first,) + tuple(cfg.phases[1:]))


def build_config(args):
    """TrainConfig from --config (if any), then the individual flags, then the defaults."""
    from .config import WIDTH_PRESETS, TrainConfig

    if args.config:
        cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        cfg = shipped_recipe()
    if args.width:  # the preset's widths; the recipe's head dropout stays
        network = replace(WIDTH_PRESETS[args.width], head_dropout=cfg.network.head_dropout)
        cfg = replace(cfg, network=network)
    if args.epochs is not None:
        cfg = cfg.with_epochs(args.epochs)
    if args.lr is not None:
        cfg = replace(cfg, phases=(replace(cfg.phases[0], lr=args.lr),) + cfg.phases[1:])
    for flag, key in (("batch_size", "batch_size"), ("threads", "threads"), ("device", "device")):
        if getattr(args, flag) is not None:
            cfg = replace(cfg, **{key: getattr(args, flag)})
    if args.balanced:
        cfg = replace(cfg, balanced_sampling=True)
    if args.init_from is not None:
        cfg = replace(cfg, init_from=args.init_from)
    return cfg


def cmd_train(args) -> int:
    """Train; under ``torchrun`` every process joins the process group first (one per GPU)."""
    from ..core.device import resolve_device
    from .distributed import init_distributed, shutdown
    from .train import run_training

    cfg = build_config(args)
    dist = init_distributed(resolve_device(cfg.device))
    try:
        logging.basicConfig(
            level=logging.INFO if dist.is_main else logging.WARNING, format="%(message)s"
        )
        # A run named by the clock would differ between ranks started a second apart.
        name = dist.broadcast(args.name or datetime.now().strftime("%Y%m%d-%H%M%S"))
        run_dir = Path(args.run_dir or Path("runs") / name)
        if dist.is_main:
            processes = f", {dist.world} processes" if dist.enabled else ""
            print(
                f"training folds {args.folds or list(range(cfg.k))} into {run_dir}: widths "
                f"{cfg.network.widths}, {cfg.total_epochs} epochs, batch {cfg.batch_size}, "
                f"{cfg.threads} threads{processes}"
            )
        run_training(
            cfg,
            args.data,
            run_dir,
            folds_to_train=args.folds,
            resume=args.resume,
            export_to=args.export_to,
            folds_file=args.folds_file,
            cache=args.cache_dir,
            limit=args.limit,
            dist=dist,
        )
        # Rank 0 writes the results after the others are done: leaving the group while a peer
        # still holds its connection aborted a gloo process now and then (SIGABRT at exit).
        dist.barrier()
    finally:
        shutdown(dist)
    if dist.enabled:
        # Everything is written and the group is left, yet gloo's threads can still abort the
        # interpreter's teardown now and then (SIGABRT, "terminate called without an active
        # exception"; seen in CI after the barrier above): a torchrun worker leaves at once.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
    return 0
