"""The multi-scale MIL network and its losses (docs/DESIGN.md §3): shapes, the evidence identity, folds."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from NoduleMalignancyLib.core.config import ATTRIBUTES, NetworkConfig
from NoduleMalignancyLib.core.model.network import (
    build_network,
    count_parameters,
    forward_folds_loop,
    forward_folds_vmap,
    max_pool2x,
    stack_folds,
    upsample2x_trilinear,
)
from NoduleMalignancyLib.training.losses import (
    LossWeights,
    dice_loss,
    gate_band,
    gate_entropy,
    multitask_loss,
    segmentation_loss,
    soft_focal_loss,
)

A = len(ATTRIBUTES)
# A narrow configuration keeps the slower checks (float64, training steps) fast.
SMALL = NetworkConfig(widths=(8, 8, 16, 16), pyramid_channels=16, groups=4)


@pytest.fixture(autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _model(cfg=SMALL, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_network(cfg).to(dtype).eval()


def _check_shapes(out, b, grid):
    d, h, w = grid
    assert out["bag_logits"].shape == (b, A)
    assert out["scale_logits"].shape == (b, 3, A)
    assert out["seg_logits"].shape == (b, 1, d, h, w)
    for key, ch in (("gates", 1), ("instance_logits", A), ("contributions", A)):
        assert len(out[key]) == 3
        for level, t in enumerate(out[key]):
            s = 2 ** (level + 1)
            assert t.shape == (b, ch, d // s, h // s, w // s), (key, level)


@pytest.mark.parametrize("grid", [(32, 48, 48), (16, 32, 32)])
def test_shapes_default_config(grid):
    model = _model(NetworkConfig())
    x = torch.randn(2, 3, *grid)
    with torch.no_grad():
        out = model(x)
    _check_shapes(out, 2, grid)
    for g in out["gates"]:
        assert torch.all(g > 0) and torch.all(g < 1)
    assert all(torch.isfinite(v).all() for v in (out["bag_logits"], out["seg_logits"]))


def test_parameter_count_and_config_round_trip():
    cfg = NetworkConfig()
    n = count_parameters(build_network(cfg))
    print(f"\nMultiScaleMILNet default config: {n:,} parameters")
    assert 200_000 < n < 3_000_000
    assert NetworkConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_conv_decoder_variant_and_bad_input():
    model = _model(replace(SMALL, decoder_full_res="conv", pyramid_kernel=3, pyramid_layers=1))
    with torch.no_grad():
        _check_shapes(model(torch.randn(1, 3, 16, 24, 24)), 1, (16, 24, 24))
        assert "seg_logits" not in model(torch.randn(1, 3, 16, 24, 24), with_seg=False)
        with pytest.raises(ValueError):
            model(torch.randn(1, 3, 12, 24, 24))


def test_gates_stay_inside_unit_interval_when_saturated():
    model = _model()
    with torch.no_grad():
        for head in model.gate_heads:
            head[-1].bias.fill_(60.0)
        out = model(torch.randn(1, 3, 16, 24, 24))
    for g in out["gates"]:
        assert torch.all(g > 0) and torch.all(g < 1)


def test_evidence_identity_float64():
    model = _model(NetworkConfig(), dtype=torch.float64)
    with torch.no_grad():
        for head in model.instance_heads:  # non-trivial per-attribute biases
            head.bias.uniform_(-2.0, 2.0)
        out = model(torch.randn(2, 3, 16, 32, 32, dtype=torch.float64))
    gates, inst, contrib = out["gates"], out["instance_logits"], out["contributions"]
    total = sum(c.sum(dim=(2, 3, 4)) for c in contrib)
    torch.testing.assert_close(total, out["bag_logits"], rtol=0, atol=1e-10)
    # Independently: one normaliser across all scales.
    num = sum((g * e).sum(dim=(2, 3, 4)) for g, e in zip(gates, inst, strict=True))
    den = sum(g.sum(dim=(2, 3, 4)) for g in gates)
    torch.testing.assert_close(out["bag_logits"], num / den, rtol=0, atol=1e-10)
    # Per-scale auxiliary logits use the per-scale normaliser.
    for level, (g, e) in enumerate(zip(gates, inst, strict=True)):
        expected = (g * e).sum(dim=(2, 3, 4)) / g.sum(dim=(2, 3, 4))
        torch.testing.assert_close(out["scale_logits"][:, level], expected, rtol=0, atol=1e-10)
    # The bag logit is a convex combination of instance logits: bounded by them.
    lo = torch.stack([e.amin(dim=(2, 3, 4)) for e in inst]).amin(0)
    hi = torch.stack([e.amax(dim=(2, 3, 4)) for e in inst]).amax(0)
    assert torch.all(out["bag_logits"] >= lo) and torch.all(out["bag_logits"] <= hi)


def test_evidence_identity_float32_default():
    model = _model(NetworkConfig())
    with torch.no_grad():
        out = model.forward_inference(torch.randn(1, 3, 32, 48, 48))
    total = sum(c.sum(dim=(2, 3, 4)) for c in out["contributions"])
    torch.testing.assert_close(total, out["bag_logits"], rtol=1e-5, atol=1e-5)
    assert torch.all((out["seg_probs"] >= 0) & (out["seg_probs"] <= 1))


def test_deterministic_in_eval_mode():
    model = _model(NetworkConfig())
    x = torch.randn(1, 3, 32, 48, 48)
    with torch.no_grad():
        a, b = model(x), model(x)
    for key in ("bag_logits", "scale_logits", "seg_logits"):
        assert torch.equal(a[key], b[key])
    for key in ("gates", "instance_logits", "contributions"):
        assert all(torch.equal(u, v) for u, v in zip(a[key], b[key], strict=True))


def test_fold_batching_vmap_equals_loop():
    models = [_model(SMALL, seed=s) for s in range(3)]
    x = torch.randn(2, 3, 16, 24, 24)
    with torch.no_grad():
        loop = forward_folds_loop(models, x)
        vm = forward_folds_vmap(stack_folds(models), x)
    assert loop["bag_logits"].shape == (3, 2, A)
    assert vm["seg_logits"].shape == (3, 2, 1, 16, 24, 24)
    for key, ref in loop.items():
        refs = ref if isinstance(ref, list) else [ref]
        got = vm[key] if isinstance(vm[key], list) else [vm[key]]
        for r, g in zip(refs, got, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    # Folds really differ, so the comparison above is not vacuous.
    assert not torch.allclose(loop["bag_logits"][0], loop["bag_logits"][1])


@pytest.mark.parametrize("shape", [(2, 3, 4, 6, 6), (1, 1, 1, 2, 5), (2, 4, 8, 12, 12)])
def test_inference_fast_paths_equal_aten(shape):
    """The separable upsampling and the strided pooling (network.py, inference only) give
    ATen's trilinear interpolation to float rounding and its max pooling exactly, also per
    fold under vmap."""
    x = torch.randn(shape, dtype=torch.float64)
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    torch.testing.assert_close(upsample2x_trilinear(x), up, rtol=0, atol=1e-12)
    folds = torch.randn((3, *shape))
    batched = torch.vmap(upsample2x_trilinear)(folds)
    torch.testing.assert_close(batched, torch.stack([upsample2x_trilinear(f) for f in folds]))
    if not any(n % 2 for n in shape[-3:]):
        assert torch.equal(max_pool2x(x), torch.nn.functional.max_pool3d(x, 2, 2))
        assert torch.equal(
            torch.vmap(max_pool2x)(folds),
            torch.nn.functional.max_pool3d(folds.flatten(0, 1), 2, 2).view(
                3, *shape[:2], *[n // 2 for n in shape[2:]]
            ),
        )


def test_the_network_infers_as_it_trains():
    """Without autograd the network takes the fast paths; with it, ATen's ops (training is
    unchanged). Both give the same outputs to float rounding."""
    model = _model(NetworkConfig())
    x = torch.randn(1, 3, 32, 48, 48, requires_grad=True)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)
    for key in ("bag_logits", "scale_logits", "seg_logits"):
        torch.testing.assert_close(fast[key], slow[key].detach(), rtol=1e-4, atol=1e-5)
    for key in ("gates", "contributions"):
        for f, s in zip(fast[key], slow[key], strict=True):
            torch.testing.assert_close(f, s.detach(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- losses


def test_soft_focal_loss_behaviour():
    t = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])
    at_target = torch.logit(t.clamp(1e-6, 1 - 1e-6))
    assert float(soft_focal_loss(at_target, t)) < 1e-9
    off = soft_focal_loss(at_target + 1.0, t)
    assert float(off) > 1e-3
    # gamma = 0 is plain BCE; focal down-weights easy entries, so it is smaller.
    logits = torch.randn(4, 5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t.expand(4, 5))
    torch.testing.assert_close(soft_focal_loss(logits, t.expand(4, 5), gamma=0.0), bce)
    assert float(soft_focal_loss(logits, t.expand(4, 5))) < float(bce)
    # Missing labels do not count, whatever their value.
    mask = torch.tensor([[True, True, False, False, True]])
    garbage = t.clone()
    garbage[0, 2:4] = 1.0 - garbage[0, 2:4]
    torch.testing.assert_close(
        soft_focal_loss(logits[:1], t, mask=mask), soft_focal_loss(logits[:1], garbage, mask=mask)
    )
    none = soft_focal_loss(logits[:1], t, mask=torch.zeros_like(mask))
    assert float(none) == 0.0


def test_dice_and_segmentation_loss():
    mask = torch.zeros(2, 1, 8, 16, 16)
    mask[:, :, 2:6, 4:12, 4:12] = 1
    perfect = (mask * 2 - 1) * 30.0
    assert float(dice_loss(perfect, mask)) < 1e-4
    assert float(segmentation_loss(perfect, mask)) < 1e-4
    assert float(dice_loss(-perfect, mask)) > 0.99
    # Voxels outside the valid region do not count, however wrong they are.
    valid = torch.ones_like(mask)
    valid[:, :, :, :, 12:] = 0
    wrong_outside = perfect.clone()
    wrong_outside[:, :, :, :, 12:] = 30.0
    assert float(segmentation_loss(wrong_outside, mask, valid)) < 1e-4
    assert float(segmentation_loss(wrong_outside, mask)) > 0.1
    # Empty mask, empty prediction: perfect, not NaN.
    assert float(dice_loss(torch.full_like(mask, -30.0), torch.zeros_like(mask))) < 1e-4


def test_gate_entropy_range():
    half = [torch.full((1, 1, 2, 2, 2), 0.5)] * 3
    torch.testing.assert_close(gate_entropy(half), torch.tensor(0.6931472))
    decisive = [torch.full((1, 1, 2, 2, 2), 1e-5)] * 3
    assert float(gate_entropy(decisive)) < 1e-3


def test_gate_band_is_zero_inside_the_gate_health_target_and_pushes_back_outside():
    shapes = [(1, 1, 4, 4, 4), (1, 1, 2, 2, 2), (1, 1, 2, 2, 2)]

    def gates(values):
        return [
            torch.as_tensor(v, dtype=torch.float32).reshape(s)
            for v, s in zip(values, shapes, strict=True)
        ]

    def spread_on(n_on, n):  # n_on cells at 1, the rest at 0: spread n_on / n
        return [1.0] * n_on + [1e-5] * (n - n_on)

    # 16 of 64 fine cells (25 %), 4 of 8 medium and coarse (50 %); shares 16 / 24 and 4 / 24.
    healthy = gates([spread_on(16, 64), spread_on(4, 8), spread_on(4, 8)])
    assert float(gate_band(healthy)) == 0.0
    uniform = gates([[0.5] * 64, [0.5] * 8, [0.5] * 8])  # the haze: spread 1.0 everywhere
    assert float(gate_band(uniform)) > 0.1
    collapsed = gates([spread_on(1, 64), spread_on(4, 8), spread_on(4, 8)])  # fine: 1 / 64
    assert float(gate_band(collapsed)) > 0.1
    one_scale = gates([spread_on(16, 64), [1e-5] * 8, [1e-5] * 8])  # fine holds all the mass
    assert float(gate_band(one_scale)) > 0.09
    # Invalid cells do not count: fine gates at 1 on the 32 invalid cells and on one of the 32
    # valid ones spread over 52 % of all cells but 3 % of the valid ones.
    valid = torch.zeros(1, 1, 8, 8, 8)
    valid[..., :4, :, :] = 1.0  # fine cells z < 2, medium and coarse z = 0
    half = [1.0, 1.0, 1e-5, 1e-5] * 2  # 2 of the 4 cells of each layer: 50 % either way
    masked = gates([[1.0] + [1e-5] * 31 + [1.0] * 32, half, half])
    assert float(gate_band(masked)) == 0.0
    assert float(gate_band(masked, valid)) > 0.05
    # A gradient step on a collapsed scale's logits lowers the penalty (it spreads the gate).
    logits = torch.full((1, 1, 4, 4, 4), -6.0)
    logits[0, 0, 0, 0, 0] = 6.0
    logits.requires_grad_(True)
    others = gates([spread_on(16, 64), spread_on(4, 8), spread_on(4, 8)])[1:]
    before = gate_band([torch.sigmoid(logits), *others])
    before.backward()
    with torch.no_grad():
        after = gate_band([torch.sigmoid(logits - 10.0 * logits.grad), *others])
    assert float(after) < float(before.detach())


def _targets(b, grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.zeros(b, 1, *grid)
    d, h, w = grid
    seg[:, :, d // 4 : 3 * d // 4, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    mask = torch.ones(b, A, dtype=torch.bool)
    mask[0, 1] = False
    return {
        "attributes": torch.rand(b, A, generator=g),
        "attribute_mask": mask,
        "seg": seg,
        "valid": torch.ones(b, 1, *grid),
    }


def test_multitask_loss_parts_and_decrease():
    torch.manual_seed(0)
    model = build_network(SMALL).train()
    grid = (16, 24, 24)
    x = torch.randn(2, 3, *grid)
    targets = _targets(2, grid)
    weights = LossWeights(attribute_weights=tuple([1.0] * (A - 3) + [2.0, 1.0, 1.0]))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(12):
        total, parts = multitask_loss(model(x), targets, weights)
        assert torch.isfinite(total)
        assert set(parts) == {"total", "attributes", "scales", "gate_entropy", "segmentation"}
        assert all(isinstance(v, float) for v in parts.values())
        opt.zero_grad()
        total.backward()
        # The attribute losses reach the gates through the pooling.
        assert float(model.gate_heads[0][-1].weight.grad.abs().sum()) > 0
        opt.step()
        history.append(parts["total"])
    assert history[-1] < 0.8 * history[0], history
    # Without segmentation targets the segmentation part is zero, and dict weights work.
    no_seg = {k: v for k, v in targets.items() if k not in ("seg", "valid")}
    _, parts = multitask_loss(model(x), no_seg, {"gate": -0.1})
    assert parts["segmentation"] == 0.0
    with pytest.raises(ValueError):
        LossWeights.from_any({"bogus": 1.0})


def test_head_dropout_trains_stochastic_and_infers_exactly():
    """Dropout 0.2 in the gate and instance heads: active in training, gone at inference (the
    evidence identity holds), and without it the layout of the shipped weights is unchanged."""
    from dataclasses import replace

    from NoduleMalignancyLib.core.config import TINY_NETWORK

    plain = build_network(TINY_NETWORK)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    model = build_network(replace(TINY_NETWORK, head_dropout=0.2))
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 6
    x = torch.randn(1, 3, 32, 48, 48)
    model.train()
    a, b = model(x)["bag_logits"], model(x)["bag_logits"]
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        out = model(x)
    total = sum(c.sum(dim=(2, 3, 4)) for c in out["contributions"])
    torch.testing.assert_close(total, out["bag_logits"], atol=1e-5, rtol=1e-5)
