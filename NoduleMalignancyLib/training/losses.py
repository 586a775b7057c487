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
"""

from __future__ import annotations

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


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over entries where mask is set (weights if float); 0 (with a graph) if none are."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype).expand_as(values)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def soft_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary focal loss with soft targets t in [0, 1]: BCE(p, t) * |t - p|^gamma, masked mean.

    The |t - p| modulation is the usual generalisation to soft labels: it is zero exactly when the
    prediction equals the (mean reader) target, so the minimum stays at p = t, and gamma = 0 gives
    plain BCE. ``mask`` (bool or float, broadcastable) drops missing labels; ``weight``
    (broadcastable, e.g. per attribute) scales entries without changing the normaliser.
    """
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma:
        bce = bce * (targets - torch.sigmoid(logits)).abs().pow(gamma)
    if weight is not None:
        bce = bce * weight.to(logits.dtype)
    return _masked_mean(bce, mask)


def dice_loss(
    seg_logits: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft Dice loss, 1 - mean over samples of (2|P.M| + s) / (|P| + |M| + s).

    ``weight`` (e.g. the validity channel) excludes voxels outside the real crop. The smoothing
    term makes an empty mask with an empty prediction a perfect score, not 0/0.
    """
    p = torch.sigmoid(seg_logits)
    m = mask.to(p.dtype)
    if weight is not None:
        w = weight.to(p.dtype)
        p, m = p * w, m * w
    dims = tuple(range(1, p.dim()))
    inter = (p * m).sum(dims)
    denom = p.sum(dims) + m.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def segmentation_loss(
    seg_logits: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """Dice + BCE (focal with ``focal_gamma`` > 0), both restricted by the per-voxel ``weight``."""
    return dice_loss(seg_logits, mask, weight) + soft_focal_loss(
        seg_logits, mask, gamma=focal_gamma, mask=weight
    )


def gate_entropy(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean binary entropy (nats) of the gate maps, each scale weighted equally.

    Per-scale means are averaged so the coarse scale (few voxels) counts as much as the fine one.
    """
    parts = []
    for g in gates:
        g = g.clamp(1e-7, 1.0 - 1e-7)
        parts.append(-(g * torch.log(g) + (1.0 - g) * torch.log1p(-g)).mean())
    return torch.stack(parts).mean()


def multitask_loss(
    outputs: Mapping, targets: Mapping, weights: LossWeights | Mapping | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total training loss and its parts (floats, for logging).

    ``outputs`` is the network's dict. ``targets``: "attributes" (B, A) in [0, 1],
    "attribute_mask" (B, A) bool (optional: all present), "seg" (B, 1, D, H, W) and "valid"
    (B, 1, D, H, W) (both optional: no segmentation loss without "seg"; all voxels count without
    "valid").
    """
    w = LossWeights.from_any(weights)
    bag = outputs["bag_logits"]
    t = targets["attributes"].to(bag.dtype)
    mask = targets.get("attribute_mask")
    attr_w = None
    if w.attribute_weights is not None:
        attr_w = torch.as_tensor(w.attribute_weights, dtype=bag.dtype, device=bag.device)

    l_attr = soft_focal_loss(bag, t, w.focal_gamma, mask, attr_w)
    scale_logits = outputs["scale_logits"]  # (B, S, A): broadcast targets over scales
    l_scale = soft_focal_loss(
        scale_logits,
        t[:, None, :].expand_as(scale_logits),
        w.focal_gamma,
        None if mask is None else mask[:, None, :],
        attr_w,
    )
    l_gate = gate_entropy(outputs["gates"])
    zero = bag.sum() * 0.0
    if "seg" in targets and "seg_logits" in outputs:
        l_seg = segmentation_loss(outputs["seg_logits"], targets["seg"], targets.get("valid"))
    else:
        l_seg = zero

    total = w.attributes * l_attr + w.scales * l_scale + w.gate * l_gate + w.segmentation * l_seg
    parts = {
        "total": float(total.detach()),
        "attributes": float(l_attr.detach()),
        "scales": float(l_scale.detach()),
        "gate_entropy": float(l_gate.detach()),
        "segmentation": float(l_seg.detach()),
    }
    return total, parts
