"""One optimiser step of a curriculum phase: its learning rate, optimizer, batch order, EMA.

Why apart from the epoch loop (``fold.py``): these are the pieces whose numbers the DDP tests
compare step by step (docs/DESIGN.md §13); the loop only sequences them.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ..core.config import ATTRIBUTES
from .batches import Batcher
from .config import PhaseConfig, TrainConfig
from .distributed import DistContext, shard_rows
from .losses import LossWeights, Normalisers, loss_counts, multitask_loss


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


def make_optimizer(model: torch.nn.Module, phase: PhaseConfig, cfg: TrainConfig):
    """AdamW over the parameters the phase trains (the frozen prefixes get no gradient)."""
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f) for f in phase.freeze))
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=phase.lr / 25.0, weight_decay=cfg.weight_decay)


def phase_mask(phase: PhaseConfig) -> torch.Tensor:
    """Which attribute heads the phase trains (the others' targets are masked out)."""
    unknown = set(phase.attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"phase {phase.name}: unknown attributes {sorted(unknown)}")
    return torch.tensor([a in phase.attributes for a in ATTRIBUTES])


def epoch_order(n: int, labels: np.ndarray, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    """The order of an epoch's training nodules (drawn from ``gen``, so a resume repeats it)."""
    if not balanced:
        return torch.randperm(n, generator=gen)
    # Class-balanced: benign, malignant and indeterminate/unknown drawn equally often.
    groups = np.where(np.isfinite(labels), labels, 2).astype(int)
    counts = np.bincount(groups, minlength=3).astype(float)
    w = 1.0 / counts[groups]
    return torch.multinomial(torch.as_tensor(w), n, replacement=True, generator=gen)


def _global_parts(parts: dict[str, float], share: float, dist: DistContext) -> dict[str, float]:
    """The loss parts of the whole batch: each rank's part is its shard's share times world."""
    keys = list(parts)
    values = torch.tensor([parts[k] * share for k in keys], dtype=torch.float64)
    summed = dist.all_reduce_sum(values).tolist()
    return {k: v / dist.world for k, v in zip(keys, summed, strict=True)}


def train_step(
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
