"""The multi-scale MIL network of docs/DESIGN.md §3 (torch only; never imports ``slicer``).

A 3D U-Net encoder (4 levels) feeds three things:

* **gates** g_l in (0, 1) on the encoder levels 2, 3, 4 (strides 2, 4, 8): a coordinate-aware
  embedding per scale, fused by a small BiFPN, then a 1x1x1 MLP and a sigmoid;
* **instance logits** e_l (one 1x1x1 conv per scale, one channel per attribute);
* a light U-Net **decoder** for the nodule segmentation at full input resolution.

Attention-gated pooling uses one normaliser across all scales, so the voxel contributions
``c_{l,a}(v) = g_l(v) e_{l,a}(v) / sum_l' sum_v' g_l'(v')`` sum exactly to the bag logit z_a: the
evidence maps explain the prediction without remainder. The per-attribute bias lives in the
instance convs, which keeps that identity exact (the normalised gate weights sum to 1).

CPU cost drives the defaults (training runs on 2 cores): every full-resolution op costs about as
much as a whole coarse level, so the encoder does one conv at full resolution, downsamples with
strided convs, the pyramid uses 1x1x1 convs, and the default decoder's full-resolution stage is a
1x1x1 read-out of the level-1 features added to the upsampled half-resolution logits
(``decoder_full_res="skip_logit"``; ``"conv"`` gives the classic 3x3x3 U-Net stage).

Fold ensembles: :func:`stack_folds` / :func:`forward_folds_vmap` evaluate K models of one
architecture as a single vmapped call; :func:`forward_folds_loop` is the plain loop and the
fallback (``nodule-malignancy bench`` reports which one a click uses).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetworkConfig

N_SCALES = 3
# Gates are squashed into [GATE_EPS, 1 - GATE_EPS] so they stay strictly inside (0, 1) in float32
# (a plain sigmoid rounds to exactly 1.0 above a logit of ~17), the pooling normaliser can never
# vanish and the gate entropy stays finite.
GATE_EPS = 1e-5


def _group_count(channels: int, groups: int) -> int:
    """The largest group count <= ``groups`` that divides ``channels`` (GroupNorm needs one)."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


class ConvNormAct(nn.Sequential):
    """Conv3d (no bias: GroupNorm follows) -> GroupNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 8):
        super().__init__(
            nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.GroupNorm(_group_count(cout, groups), cout),
            nn.ReLU(inplace=True),
        )


def coordinate_grid(
    shape: Sequence[int], device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(4, d, h, w): z, y, x of each cell centre in [-1, 1] relative to the VOI centre, and radius.

    -1 and 1 are the outer faces of the VOI, so a coarse cell's coordinate is the mean of the fine
    cells it covers and all scales share one frame.
    """
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) * (2.0 / n) - 1.0 for n in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(z * z + y * y + x * x)
    return torch.stack((z, y, x, r))


class FastFusion(nn.Module):
    """BiFPN fast normalised fusion: sum_i relu(w_i) x_i / (sum_i relu(w_i) + eps)."""

    def __init__(self, n_inputs: int, eps: float = 1e-4):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_inputs))
        self.eps = eps

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + self.eps)
        out = w[0] * inputs[0]
        for i in range(1, len(inputs)):
            out = out + w[i] * inputs[i]
        return out


class PyramidConv(nn.Sequential):
    """The conv after each BiFPN fusion: 1x1x1 (cheap on CPU) or depthwise-separable 3x3x3."""

    def __init__(self, channels: int, kernel: int, groups: int):
        layers: list[nn.Module] = []
        if kernel > 1:
            layers.append(
                nn.Conv3d(
                    channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False
                )
            )
        layers += [
            nn.Conv3d(channels, channels, 1, bias=False),
            nn.GroupNorm(_group_count(channels, groups), channels),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if _inference(x) and all(
        2 * a == b for a, b in zip(x.shape[-3:], like.shape[-3:], strict=True)
    ):
        return upsample2x_trilinear(x)
    return F.interpolate(x, size=like.shape[-3:], mode="trilinear", align_corners=False)


def _down(x: torch.Tensor) -> torch.Tensor:
    if _inference(x) and not any(n % 2 for n in x.shape[-3:]):
        return max_pool2x(x)
    return F.max_pool3d(x, kernel_size=2, stride=2)


# Inference fast paths. On the CPU, ATen's trilinear upsampling and 3D max pooling took about a
# quarter of the network's time on one thread (5-10x what the same arithmetic costs as strided
# tensor ops; docs/benchmarks.md). Without autograd the network uses the versions below, which give the
# same values to float rounding (trilinear: order of the sums; pooling: exact); training keeps
# ATen's, so a training run is unchanged.


def _inference(x: torch.Tensor) -> bool:
    """CPU, no autograd (GPUs keep ATen's kernels, which are fast there)."""
    return x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)


def _upsample2x_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear 2x upsampling along ``dim`` (align_corners=False, edges clamped), written into one
    output: out[2i] = 0.75 x[i] + 0.25 x[i-1], out[2i+1] = 0.75 x[i] + 0.25 x[i+1]."""
    n = x.shape[dim]
    shape = list(x.shape)
    shape.insert(dim + 1, 2)
    out = x.new_empty(shape)  # (vmap-safe: a new tensor of x's batch)
    even, odd = out.select(dim + 1, 0), out.select(dim + 1, 1)
    even.copy_(x).mul_(0.75)
    odd.copy_(even)
    even.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1), alpha=0.25)
    even.narrow(dim, 0, 1).add_(x.narrow(dim, 0, 1), alpha=0.25)
    odd.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1), alpha=0.25)
    odd.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 1, 1), alpha=0.25)
    return out.flatten(dim, dim + 1)


def upsample2x_trilinear(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)`` as three
    separable passes over the last three dimensions."""
    for dim in range(x.dim() - 1, x.dim() - 4, -1):
        x = _upsample2x_axis(x, dim)
    return x


def max_pool2x(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool3d(x, 2, 2)`` (even sizes) as pairwise maxima along each of the last three
    dimensions."""
    x = torch.maximum(x[..., 0::2], x[..., 1::2])
    x = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(x[..., 0::2, :, :], x[..., 1::2, :, :])


class BiFPNLayer(nn.Module):
    """One BiFPN layer over three scales (fine p1, mid p2, coarse p3): top-down then bottom-up."""

    def __init__(self, channels: int, kernel: int = 1, groups: int = 8):
        super().__init__()
        self.fuse_td2 = FastFusion(2)
        self.fuse_out1 = FastFusion(2)
        self.fuse_out2 = FastFusion(3)
        self.fuse_out3 = FastFusion(2)
        self.conv_td2 = PyramidConv(channels, kernel, groups)
        self.conv_out1 = PyramidConv(channels, kernel, groups)
        self.conv_out2 = PyramidConv(channels, kernel, groups)
        self.conv_out3 = PyramidConv(channels, kernel, groups)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        p1, p2, p3 = feats
        td2 = self.conv_td2(self.fuse_td2([p2, _up(p3, p2)]))
        out1 = self.conv_out1(self.fuse_out1([p1, _up(td2, p1)]))
        out2 = self.conv_out2(self.fuse_out2([p2, td2, _down(out1)]))
        out3 = self.conv_out3(self.fuse_out3([p3, _down(out2)]))
        return [out1, out2, out3]


class MultiScaleMILNet(nn.Module):
    """Multi-scale MIL network with a segmentation decoder (see module docstring).

    ``forward(x)`` with x of shape (B, C, D, H, W), D, H, W divisible by 8, returns a dict:

    * ``bag_logits`` (B, A): gated pooling over all scales with one normaliser;
    * ``scale_logits`` (B, 3, A): per-scale pooling with the per-scale normaliser (auxiliary);
    * ``gates`` list of 3 (B, 1, d_l, h_l, w_l) in (0, 1), strides 2, 4, 8;
    * ``instance_logits`` list of 3 (B, A, d_l, h_l, w_l);
    * ``contributions`` list of 3 (B, A, d_l, h_l, w_l), summing over scales and voxels to
      ``bag_logits``;
    * ``bag_features`` (B, sum of the MIL levels' channels): the gate-pooled features;
    * ``seg_logits`` (B, 1, D, H, W) (absent with ``with_seg=False``).

    Pooling runs in at least float32 (also under autocast) so the identity and the normaliser do
    not suffer from half precision.
    """

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.cfg = cfg
        w = tuple(cfg.widths)
        convs = tuple(cfg.convs_per_level)
        dw = tuple(cfg.decoder_widths)
        g = cfg.groups
        if len(w) != 4 or len(convs) != 4 or min(convs) < 1:
            raise ValueError("widths and convs_per_level need 4 levels, at least one conv each")
        if len(dw) != 3:
            raise ValueError("decoder_widths needs 3 entries (levels 1, 2, 3)")
        if cfg.decoder_full_res not in ("skip_logit", "conv"):
            raise ValueError(
                f"decoder_full_res must be 'skip_logit' or 'conv': {cfg.decoder_full_res}"
            )
        n_attr, p_ch = cfg.n_attributes, cfg.pyramid_channels

        # Encoder: level 1 at full resolution; levels 2-4 start with a stride-2 conv, which costs
        # a quarter of pool-then-conv's full-resolution work.
        self.encoder = nn.ModuleList()
        cin = cfg.in_channels
        for level in range(4):
            blocks = [ConvNormAct(cin, w[level], 3, stride=1 if level == 0 else 2, groups=g)]
            blocks += [
                ConvNormAct(w[level], w[level], 3, groups=g) for _ in range(convs[level] - 1)
            ]
            self.encoder.append(nn.Sequential(*blocks))
            cin = w[level]

        # Gates: coordinate-aware embedding -> BiFPN -> 1x1x1 MLP -> sigmoid.
        feat_ch = w[1:]
        self.embed = nn.ModuleList(ConvNormAct(c + 4, p_ch, 1, groups=g) for c in feat_ch)
        self.pyramid = nn.ModuleList(
            BiFPNLayer(p_ch, cfg.pyramid_kernel, g) for _ in range(cfg.pyramid_layers)
        )
        hidden = max(1, p_ch // 2)

        def drop() -> list[nn.Module]:  # no layer at all at 0: the shipped weights' layout
            return [nn.Dropout(cfg.head_dropout)] if cfg.head_dropout > 0 else []

        self.gate_heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(p_ch, hidden, 1), nn.ReLU(inplace=True), *drop(), nn.Conv3d(hidden, 1, 1)
            )
            for _ in feat_ch
        )
        # Instances: the conv bias is the per-attribute bias (identity stays exact).
        self.instance_heads = nn.ModuleList(
            nn.Sequential(*drop(), nn.Conv3d(c, n_attr, 1))
            if cfg.head_dropout > 0
            else nn.Conv3d(c, n_attr, 1)
            for c in feat_ch
        )

        # Decoder: upsample, concatenate the skip, one 3x3x3 conv per level.
        self.dec3 = ConvNormAct(w[3] + w[2], dw[2], 3, groups=g)
        self.dec2 = ConvNormAct(dw[2] + w[1], dw[1], 3, groups=g)
        if cfg.decoder_full_res == "conv":
            self.dec1 = ConvNormAct(dw[1] + w[0], dw[0], 3, groups=g)
            self.seg_head = nn.Conv3d(dw[0], 1, 1)
        else:
            self.seg_head_half = nn.Conv3d(dw[1], 1, 1)
            self.seg_head = nn.Conv3d(w[0], 1, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected (B, {self.cfg.in_channels}, D, H, W), got {tuple(x.shape)}")
        if any(n % 8 for n in x.shape[-3:]):
            raise ValueError(f"D, H, W must be divisible by 8, got {tuple(x.shape[-3:])}")

    def forward(self, x: torch.Tensor, with_seg: bool = True) -> dict:
        self._check_input(x)
        feats = []
        h = x
        for block in self.encoder:
            h = block(h)
            feats.append(h)
        mil_feats = feats[1:]
        batch = x.shape[0]

        pyr = []
        for f, embed in zip(mil_feats, self.embed, strict=True):
            coords = coordinate_grid(f.shape[-3:], device=f.device, dtype=f.dtype)
            coords = coords.unsqueeze(0).expand(batch, -1, -1, -1, -1)
            pyr.append(embed(torch.cat([f, coords], dim=1)))
        for layer in self.pyramid:
            pyr = layer(pyr)

        pool_dtype = torch.promote_types(x.dtype, torch.float32)
        gates, instances = [], []
        for p, f, gate_head, inst_head in zip(
            pyr, mil_feats, self.gate_heads, self.instance_heads, strict=True
        ):
            s = gate_head(p).to(pool_dtype)
            gates.append(GATE_EPS + (1.0 - 2.0 * GATE_EPS) * torch.sigmoid(s))
            instances.append(inst_head(f).to(pool_dtype))
        out = gated_pooling(gates, instances)
        out["bag_features"] = pooled_features(gates, mil_feats, pool_dtype)
        out["gates"] = gates
        out["instance_logits"] = instances
        if with_seg:
            out["seg_logits"] = self._decode(feats)
        return out

    def _decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        e1, e2, e3, e4 = feats
        d3 = self.dec3(torch.cat([_up(e4, e3), e3], dim=1))
        d2 = self.dec2(torch.cat([_up(d3, e2), e2], dim=1))
        if self.cfg.decoder_full_res == "conv":
            return self.seg_head(self.dec1(torch.cat([_up(d2, e1), e1], dim=1)))
        # Upsample a single channel (cheap) and add a linear read-out of the full-res features.
        return _up(self.seg_head_half(d2), e1) + self.seg_head(e1)

    @torch.no_grad()
    def forward_inference(self, x: torch.Tensor) -> dict:
        """Everything evidence maps and the overlay need, without autograd, plus probabilities."""
        out = self.forward(x, with_seg=True)
        out["attribute_probs"] = torch.sigmoid(out["bag_logits"])
        out["seg_probs"] = torch.sigmoid(out["seg_logits"])
        return out


def pooled_features(
    gates: Sequence[torch.Tensor], feats: Sequence[torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """(B, sum of channels): each scale's features pooled by its gates, under the bag's one
    normaliser. Why this embedding: every attribute's bag logit is a linear read-out of it (plus
    the gate mass shares), so nodules close in it look alike to the heads (similar nodules)."""
    total = sum(g.sum(dim=(2, 3, 4)) for g in gates)  # (B, 1)
    return torch.cat(
        [(g * f.to(dtype)).sum(dim=(2, 3, 4)) / total for g, f in zip(gates, feats, strict=True)],
        dim=1,
    )


def gated_pooling(gates: Sequence[torch.Tensor], instances: Sequence[torch.Tensor]) -> dict:
    """Attention-gated MIL pooling with one normaliser across scales.

    Returns ``bag_logits`` (B, A), ``scale_logits`` (B, n_scales, A) and ``contributions`` (list of
    (B, A, ...)). The bag logit is computed as the sum of the contributions, so the evidence
    identity holds by construction up to summation round-off.
    """
    weighted = [g * e for g, e in zip(gates, instances, strict=True)]
    gate_sums = [g.sum(dim=(2, 3, 4)) for g in gates]  # (B, 1) each
    total = gate_sums[0]
    for s in gate_sums[1:]:
        total = total + s
    norm = total[:, :, None, None, None]
    contributions = [we / norm for we in weighted]
    bag = contributions[0].sum(dim=(2, 3, 4))
    for c in contributions[1:]:
        bag = bag + c.sum(dim=(2, 3, 4))
    scale_logits = torch.stack(
        [we.sum(dim=(2, 3, 4)) / gs for we, gs in zip(weighted, gate_sums, strict=True)], dim=1
    )
    return {"bag_logits": bag, "scale_logits": scale_logits, "contributions": contributions}


def build_network(cfg: NetworkConfig | None = None) -> MultiScaleMILNet:
    """The network for a configuration (defaults: docs/DESIGN.md §3)."""
    return MultiScaleMILNet(cfg if cfg is not None else NetworkConfig())


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------
# K folds of one architecture in one call


def stack_outputs(outputs: Sequence[dict]) -> dict:
    """Stack per-model output dicts (tensors or lists of tensors) along a new leading fold dim."""
    result = {}
    for key, first in outputs[0].items():
        if isinstance(first, (list, tuple)):
            result[key] = [torch.stack([o[key][i] for o in outputs]) for i in range(len(first))]
        else:
            result[key] = torch.stack([o[key] for o in outputs])
    return result


def forward_folds_loop(models: Sequence[nn.Module], x: torch.Tensor, **kwargs) -> dict:
    """Run each model on the shared input x; outputs gain a leading fold dimension K."""
    return stack_outputs([m(x, **kwargs) for m in models])


class FoldStack:
    """K models' parameters and buffers stacked along dim 0 plus a stateless copy of the module.

    Built once (stacking copies the weights); call :func:`forward_folds_vmap` per batch.
    """

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("need at least one model")
        names = [type(m) for m in models]
        if any(n is not names[0] for n in names):
            raise ValueError("all fold models must share one architecture")
        self.params, self.buffers = torch.func.stack_module_state(list(models))
        # The template holds no real weights: functional_call substitutes the stacked ones.
        self.template = copy.deepcopy(models[0]).to("meta")
        self.template.train(models[0].training)
        self.k = len(models)


def stack_folds(models: Sequence[nn.Module]) -> FoldStack:
    """Stack K fold models for :func:`forward_folds_vmap`."""
    return FoldStack(models)


def forward_folds_vmap(stack: FoldStack, x: torch.Tensor, **kwargs) -> dict:
    """One vmapped call over the K stacked folds; x (B, C, D, H, W) is shared by all folds.

    Returns the model's output dict with a leading fold dimension K on every tensor.
    """

    def one(params, buffers, inp):
        return torch.func.functional_call(stack.template, (params, buffers), (inp,), kwargs)

    return torch.vmap(one, in_dims=(0, 0, None))(stack.params, stack.buffers, x)
