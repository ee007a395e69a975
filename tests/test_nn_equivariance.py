"""Every layer that claims an equivariance proves it numerically; the ones that don't, fail.

Exact equivariance: errors below 1e-5 in float32 over every group element (or a random set of
shifts). Broken equivariance (zero padding, ordinary striding, a free FC path): errors clearly
above 1e-3.
"""

import pytest
import torch

from equilib import nn as enn
from equilib.groups import CyclicShifts, Rotations, equivariance_error, invariance_error
from equilib.models import build

EXACT, BROKEN = 1e-5, 1e-3


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _shifts(H, W, n, gen):
    ys = torch.randint(H, (n,), generator=gen).tolist()
    xs = torch.randint(W, (n,), generator=gen).tolist()
    return [(1, 0), (0, 1), (1, 1)] + list(zip(ys, xs))


@torch.no_grad()
def up_to_shift_error(f, x, g, H, W):
    """max over examples of min over output shifts d of |f(g.x) - shift_d f(x)| / |f(x)|.

    A brute-force oracle: polyphase striding picks its phase per example, so the output shift
    that undoes an input shift may differ between the examples of a batch.
    """
    fx = f(x)
    fgx = f(torch.roll(x, shifts=g, dims=(-2, -1)))
    h, w = fx.shape[-2:]
    errs = torch.stack(
        [
            (fgx - torch.roll(fx, (a, b), dims=(-2, -1))).flatten(1).norm(dim=1)
            for a in range(h)
            for b in range(w)
        ]
    )  # (shifts, B)
    return float((errs.min(dim=0).values / fx.flatten(1).norm(dim=1)).max())


# ------------------------------------------------------------------ translations


def test_circular_conv_is_shift_equivariant_zero_padding_is_not(gen):
    x = torch.randn(3, 2, 8, 8, generator=gen)
    G = CyclicShifts(8, 8)
    circ = enn.conv2d(2, 4, 3, padding_mode="circular")
    zero = enn.conv2d(2, 4, 3, padding_mode="zeros")
    with torch.no_grad():
        zero.weight.copy_(circ.weight)
    assert equivariance_error(circ, G, x) < EXACT  # all 64 shifts
    assert equivariance_error(zero, G, x, elements=[(1, 0), (0, 3), (5, 7)]) > BROKEN


@pytest.mark.parametrize("stride", [2, 4])
def test_polyphase_striding_commutes_with_shifts_plain_striding_does_not(gen, stride):
    H = 16
    conv = enn.conv2d(2, 3, 3)
    x = torch.randn(2, 2, H, H, generator=gen)
    aps = lambda z: enn.PolyphaseDownsample(stride)(conv(z))  # noqa: E731
    plain = lambda z: enn.PlainDownsample(stride)(conv(z))  # noqa: E731
    for g in _shifts(H, H, 5, gen):
        assert up_to_shift_error(aps, x, g, H, H) < EXACT, g
    # a one-pixel shift changes which pixels plain striding keeps: no output shift explains it
    assert up_to_shift_error(plain, x, (1, 0), H, H) > BROKEN
    assert up_to_shift_error(plain, x, (0, 1), H, H) > BROKEN
    # shifts by multiples of the stride are the exact subgroup for both
    G = CyclicShifts(H, H)
    sub = [(stride, 0), (0, 2 * stride), (stride, stride)]
    act_out = lambda g, y: torch.roll(y, (g[0] // stride, g[1] // stride), dims=(-2, -1))  # noqa
    assert equivariance_error(plain, G, x, out_action=act_out, elements=sub) < EXACT


def test_polyphase_phase_is_consistent_across_paths(gen):
    """conv + gconv summed in one block: one phase for both keeps the block equivariant."""
    H = 8
    block = enn.SoftBlock(
        {
            "conv": enn.make_path("conv", (2, H, H), 3, stride=2),
            "gconv": enn.make_path("gconv", (2, H, H), 3, stride=2),
        },
        stride=2,
    )
    x = torch.randn(2, 2, H, H, generator=gen)
    for g in _shifts(H, H, 4, gen):
        assert up_to_shift_error(block, x, g, H, H) < EXACT


@pytest.mark.parametrize("fc_kind", ["fc", "f-fc", "s-fc"])
def test_soft_block_is_shift_equivariant_iff_the_free_path_is_zero(gen, fc_kind):
    H = 8
    x = torch.randn(3, 2, H, H, generator=gen)
    G = CyclicShifts(H, H)
    block = enn.SoftBlock(
        {"fc": enn.make_path(fc_kind, (2, H, H), 3), "conv": enn.make_path("conv", (2, H, H), 3)}
    )
    assert equivariance_error(block, G, x, elements=_shifts(H, H, 5, gen)) > BROKEN
    with torch.no_grad():
        for p in block.paths["fc"].parameters():
            p.zero_()
    assert equivariance_error(block, G, x, elements=_shifts(H, H, 8, gen)) < EXACT


@pytest.mark.parametrize(
    "name", ["conv", "s-conv", "fc+conv", "f-fc+conv", "s-fc+s-conv", "fc+conv+gconv", "gconv-c4"]
)
def test_models_are_shift_invariant_when_free_paths_are_zeroed(gen, name):
    model = build(name, (1, 16, 16), width=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".paths.fc." in n:
                p.zero_()
    x = torch.randn(3, 1, 16, 16, generator=gen)
    G = CyclicShifts(16, 16)
    assert invariance_error(model, G, x, elements=_shifts(16, 16, 6, gen)) < EXACT


def test_fc_model_is_not_shift_invariant(gen):
    model = build("fc+conv", (1, 16, 16), width=4)
    x = torch.randn(3, 1, 16, 16, generator=gen)
    assert invariance_error(model, CyclicShifts(16, 16), x, elements=[(1, 0), (3, 2)]) > BROKEN


# ------------------------------------------------------------------ rotations


def test_lifting_conv_is_c4_equivariant(gen):
    layer = enn.LiftingConv2d(2, 3, 3)
    x = torch.randn(2, 2, 10, 10, generator=gen)
    C4 = Rotations(4)
    assert equivariance_error(layer, C4, x, out_action=C4.act_fmap) < EXACT
    # ...and a plain conv is not
    conv = enn.conv2d(2, 3, 3)
    assert equivariance_error(conv, C4, x) > BROKEN
    # ...and it still commutes with shifts (circular padding)
    S = CyclicShifts(10, 10)
    assert equivariance_error(layer, S, x, elements=_shifts(10, 10, 4, gen)) < EXACT


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_group_conv_is_c4_equivariant(gen, padding_mode):
    layer = enn.GroupConv2d(3, 2, 3, padding_mode=padding_mode)
    x = torch.randn(2, 3, 4, 10, 10, generator=gen)
    C4 = Rotations(4)
    assert equivariance_error(layer, C4, x, in_action=C4.act_fmap, out_action=C4.act_fmap) < EXACT
    # rotating space without permuting the group axis is the wrong action: clearly broken
    assert equivariance_error(layer, C4, x, in_action=C4.act, out_action=C4.act_fmap) > BROKEN


def test_group_pool_and_rotation_pooled_conv_are_equivariant(gen):
    C4 = Rotations(4)
    x = torch.randn(2, 3, 4, 8, 8, generator=gen)
    assert equivariance_error(enn.GroupPool("max"), C4, x, in_action=C4.act_fmap) < EXACT
    path = enn.RotationPooledConv2d(2, 3, 3)
    assert equivariance_error(path, C4, torch.randn(2, 2, 8, 8, generator=gen)) < EXACT


def test_gconv_c4_model_is_rotation_invariant_conv_model_is_not(gen):
    x = torch.randn(4, 1, 16, 16, generator=gen)
    C4 = Rotations(4)
    assert invariance_error(build("gconv-c4", (1, 16, 16), width=4), C4, x) < EXACT
    assert invariance_error(build("conv", (1, 16, 16), width=4), C4, x) > BROKEN


def test_cn_layers_exact_on_quarter_turns_approximate_otherwise(gen):
    C8 = Rotations(8)
    lift = enn.LiftingConvCN(1, 3, 5, N=8)
    gconv = enn.GroupConvCN(3, 2, 5, N=8)
    f = lambda z: gconv(torch.relu(lift(z)))  # noqa: E731
    x = torch.randn(2, 1, 12, 12, generator=gen)
    quarter = [0, 2, 4, 6]
    assert equivariance_error(f, C8, x, out_action=C8.act_fmap, elements=quarter) < EXACT
    err45 = equivariance_error(f, C8, x, out_action=C8.act_fmap, elements=[1])
    assert 0 < err45 < 1.0  # interpolation makes 45-degree rotations approximate, not exact
