"""Losses of the multi-task MIL network (docs/DESIGN.md §3; torch only).

Total loss (defaults in :class:`LossWeights`)::

    L = sum_a w_a * focal(bag_logits_a)                 attributes, soft targets, masked
      + 0.1 * mean_l focal(scale_logits_l)              auxiliary per-scale heads
      + 0.1 * gate_entropy(gates)                       gate regulariser, sign +
      + 1.0 * (Dice + BCE)(seg_logits, seg | valid)     segmentation

Gate-entropy sign: **+** (the entropy is minimised). Low-entropy gates are decisive (near 0 or 1),
so the normalised gate weights concentrate on few voxels and the evidence maps are focal instead
of a uniform haze; the attribute losses keep the gates from closing everywhere (the pooling is a
ratio, so a uniformly low gate changes nothing), and ``GATE_EPS`` in the network keeps the
entropy and the normaliser finite. Set ``gate`` negative to encourage spread-out gates instead.

``gate_band`` (off by default) is a hinge on the gate-health figures of core/model/gates.py instead:
zero while every scale spreads over 5-80 % of its valid cells and holds at most 90 % of the
gate mass (the issue's target, models/MAPS.md), so it pushes neither towards the 0.5 haze that
binary-entropy maximisation gives nor towards collapse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Weights of the parts of :func:`multitask_loss`."""

    attributes: float = 1.0
    scales: float = 0.1
    gate: float = 0.1
    gate_band: float = 0.0
    segmentation: float = 1.0
    focal_gamma: float = 2.0
    # Optional per-attribute weights (length A), e.g. to emphasise malignancy.
    attribute_weights: tuple[float, ...] | None = None

    @classmethod
    def from_any(cls, w: LossWeights | Mapping | None) -> LossWeights:
        if w is None:
            return cls()
        if isinstance(w, LossWeights):
            return w
        known = {f.name for f in fields(cls)}
        unknown = set(w) - known
        if unknown:
            raise ValueError(f"unknown loss weights: {sorted(unknown)}")
        return cls(**dict(w))


@dataclass(frozen=True)
class Normalisers:
    """Denominators of the loss's means, taken over the global batch of several processes.

    Each is the global count divided by the number of processes: DDP averages the ranks'
    gradients, so a rank's sum over its shard divided by these gives exactly the gradient of the
    mean over the whole batch, even when shards hold different numbers of valid targets
    (docs/DESIGN.md §13). ``samples``: items; ``attributes``: valid attribute targets;
    ``seg_voxels``: the summed voxel weights of the segmentation loss.
    """

    samples: float
    attributes: float
    seg_voxels: float

    @classmethod
    def from_counts(cls, counts: torch.Tensor, world: int) -> Normalisers:
        """From the (all-reduced) :func:`loss_counts`; clamped at 1 like the local means."""
        n, a, v = (max(float(c), 1.0) / world for c in counts.tolist())
        return cls(n, a, v)


def loss_counts(targets: Mapping) -> torch.Tensor:
    """This shard's (items, valid attribute targets, seg voxel weight), float64 on CPU."""
    n = targets["attributes"].shape[0]
    mask = targets.get("attribute_mask")
    a = float(mask.sum()) if mask is not None else float(targets["attributes"].numel())
    valid = targets.get("valid")
    if "seg" not in targets:
        v = 0.0
    elif valid is not None:
        v = float(valid.double().sum())
    else:
        v = float(targets["seg"].numel())
    return torch.tensor([n, a, v], dtype=torch.float64)


def _masked_mean(
    values: torch.Tensor, mask: torch.Tensor | None, denominator: float | None = None
) -> torch.Tensor:
    """Mean over entries where mask is set (weights if float); 0 (with a graph) if none are.

    ``denominator`` replaces the local count (a global one, see :class:`Normalisers`).
    """
    if mask is None:
        return values.mean() if denominator is None else values.sum() / denominator
    m = mask.to(values.dtype).expand_as(values)
    if denominator is not None:
        return (values * m).sum() / denominator
    return (values * m).sum() / m.sum().clamp_min(1.0)


def soft_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    denominator: float | None = None,
) -> torch.Tensor:
    """Binary focal loss with soft targets t in [0, 1]: BCE(p, t) * |t - p|^gamma, masked mean.

    The |t - p| modulation is the usual generalisation to soft labels: it is zero exactly when the
    prediction equals the (mean reader) target, so the minimum stays at p = t, and gamma = 0 gives
    plain BCE. ``mask`` (bool or float, broadcastable) drops missing labels; ``weight``
    (broadcastable, e.g. per attribute) scales entries without changing the normaliser;
    ``denominator`` replaces the local count of entries.
    """
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma:
        bce = bce * (targets - torch.sigmoid(logits)).abs().pow(gamma)
    if weight is not None:
        bce = bce * weight.to(logits.dtype)
    return _masked_mean(bce, mask, denominator)


def dice_loss(
    seg_logits: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    smooth: float = 1.0,
    samples: float | None = None,
) -> torch.Tensor:
    """Soft Dice loss, 1 - mean over samples of (2|P.M| + s) / (|P| + |M| + s).

    ``weight`` (e.g. the validity channel) excludes voxels outside the real crop. The smoothing
    term makes an empty mask with an empty prediction a perfect score, not 0/0. ``samples``
    replaces the local number of samples (a global count, :class:`Normalisers`).
    """
    p = torch.sigmoid(seg_logits)
    m = mask.to(p.dtype)
    if weight is not None:
        w = weight.to(p.dtype)
        p, m = p * w, m * w
    dims = tuple(range(1, p.dim()))
    inter = (p * m).sum(dims)
    denom = p.sum(dims) + m.sum(dims)
    score = (2.0 * inter + smooth) / (denom + smooth)
    if samples is not None:
        return (1.0 - score).sum() / samples
    return 1.0 - score.mean()


def segmentation_loss(
    seg_logits: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
    norm: Normalisers | None = None,
) -> torch.Tensor:
    """Dice + BCE (focal with ``focal_gamma`` > 0), both restricted by the per-voxel ``weight``."""
    samples = None if norm is None else norm.samples
    voxels = None if norm is None else norm.seg_voxels
    return dice_loss(seg_logits, mask, weight, samples=samples) + soft_focal_loss(
        seg_logits, mask, gamma=focal_gamma, mask=weight, denominator=voxels
    )


def gate_entropy(gates: Sequence[torch.Tensor], samples: float | None = None) -> torch.Tensor:
    """Mean binary entropy (nats) of the gate maps, each scale weighted equally.

    Per-scale means are averaged so the coarse scale (few voxels) counts as much as the fine one.
    ``samples`` replaces the local number of samples (a global count, :class:`Normalisers`).
    """
    parts = []
    for g in gates:
        g = g.clamp(1e-7, 1.0 - 1e-7)
        h = -(g * torch.log(g) + (1.0 - g) * torch.log1p(-g))
        parts.append(h.mean() if samples is None else h.sum() / (samples * h[0].numel()))
    return torch.stack(parts).mean()


def gate_band(
    gates: Sequence[torch.Tensor],
    valid: torch.Tensor | None = None,
    spread: tuple[float, float] = (0.05, 0.8),
    max_share: float = 0.9,
    samples: float | None = None,
) -> torch.Tensor:
    """Hinge on the gate health of each sample (core/model/gates.py's figures, over valid cells).

    Per scale: log-distance of the spread (participation ratio / valid cells) below or above
    ``spread``, weighted by the scale's (detached) mass share so a scale that carries little
    weight is free; plus the mass share above ``max_share``. Summed over scales, mean over
    samples (``samples``: a global count, :class:`Normalisers`).
    """
    low, high = (math.log(b) for b in spread)
    masses, penalties = [], []
    for g in gates:
        g = g.float()
        if valid is None:
            m = torch.ones_like(g)
        else:
            kernel = tuple(v // c for v, c in zip(valid.shape[-3:], g.shape[-3:], strict=True))
            m = (F.max_pool3d(valid.float(), kernel) > 0.5).to(g.dtype)
        n = m.flatten(1).sum(1).clamp_min(1.0)
        mass = (g * m).flatten(1).sum(1)
        square = (g * g * m).flatten(1).sum(1).clamp_min(1e-12)
        log_spread = 2.0 * torch.log(mass.clamp_min(1e-12)) - torch.log(square) - torch.log(n)
        penalties.append(F.relu(low - log_spread) + F.relu(log_spread - high))
        masses.append(mass)
    mass = torch.stack(masses, 1)  # (B, S)
    share = mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
    per_sample = (torch.stack(penalties, 1) * share.detach()).sum(1)
    per_sample = per_sample + F.relu(share - max_share).sum(1)
    return per_sample.mean() if samples is None else per_sample.sum() / samples


def multitask_loss(
    outputs: Mapping,
    targets: Mapping,
    weights: LossWeights | Mapping | None = None,
    norm: Normalisers | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total training loss and its parts (floats, for logging).

    ``outputs`` is the network's dict. ``targets``: "attributes" (B, A) in [0, 1],
    "attribute_mask" (B, A) bool (optional: all present), "seg" (B, 1, D, H, W) and "valid"
    (B, 1, D, H, W) (both optional: no segmentation loss without "seg"; all voxels count without
    "valid"). ``norm``: global denominators when the batch is one process's shard (without it
    every mean is over this batch).
    """
    w = LossWeights.from_any(weights)
    bag = outputs["bag_logits"]
    t = targets["attributes"].to(bag.dtype)
    mask = targets.get("attribute_mask")
    attr_w = None
    if w.attribute_weights is not None:
        attr_w = torch.as_tensor(w.attribute_weights, dtype=bag.dtype, device=bag.device)

    l_attr = soft_focal_loss(
        bag, t, w.focal_gamma, mask, attr_w, None if norm is None else norm.attributes
    )
    scale_logits = outputs["scale_logits"]  # (B, S, A): broadcast targets over scales
    l_scale = soft_focal_loss(
        scale_logits,
        t[:, None, :].expand_as(scale_logits),
        w.focal_gamma,
        None if mask is None else mask[:, None, :],
        attr_w,
        None if norm is None else norm.attributes * scale_logits.shape[1],
    )
    l_gate = gate_entropy(outputs["gates"], None if norm is None else norm.samples)
    zero = bag.sum() * 0.0
    if "seg" in targets and "seg_logits" in outputs:
        l_seg = segmentation_loss(
            outputs["seg_logits"], targets["seg"], targets.get("valid"), norm=norm
        )
    else:
        l_seg = zero

    total = w.attributes * l_attr + w.scales * l_scale + w.gate * l_gate + w.segmentation * l_seg
    parts = {}
    if w.gate_band:
        l_band = gate_band(
            outputs["gates"], targets.get("valid"), samples=None if norm is None else norm.samples
        )
        total = total + w.gate_band * l_band
        parts["gate_band"] = float(l_band.detach())
    parts |= {
        "total": float(total.detach()),
        "attributes": float(l_attr.detach()),
        "scales": float(l_scale.detach()),
        "gate_entropy": float(l_gate.detach()),
        "segmentation": float(l_seg.detach()),
    }
    return total, parts
