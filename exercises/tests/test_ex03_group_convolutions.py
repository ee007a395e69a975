"""Grading tests of exercises/ex03_group_convolutions.py: against equilib.nn and equivariance."""

from __future__ import annotations

import torch

from equilib import nn as enn
from equilib.groups import CyclicShifts, Rotations, equivariance_error, invariance_error

NAME = "ex03_group_convolutions"
C4 = Rotations(4)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_3_1_rotated_filters(mod):
    w = _rand(2, 3, 5, 5)
    out = mod.rotated_filters(w)
    assert tuple(out.shape) == (4, 2, 3, 5, 5)
    torch.testing.assert_close(out[0], w)
    # a quarter turn maps the top-right tap to the top-left (counter-clockwise)
    torch.testing.assert_close(out[1][..., 0, 0], w[..., 0, 4])
    for g in range(4):
        torch.testing.assert_close(out[(g + 1) % 4], torch.rot90(out[g], 1, dims=(-2, -1)))


def test_3_2_lifting_conv_matches_equilib(mod):
    x, w = _rand(2, 2, 8, 8), _rand(3, 2, 3, 3, seed=1)
    layer = enn.LiftingConv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        layer.conv.weight.copy_(w)
        expect = layer(x)
    torch.testing.assert_close(mod.lifting_conv(x, w), expect, rtol=1e-4, atol=1e-5)


def test_3_2_lifting_conv_is_equivariant(mod):
    x, w = _rand(2, 1, 10, 10, seed=2), _rand(2, 1, 5, 5, seed=3)
    f = lambda t: mod.lifting_conv(t, w)  # noqa: E731
    assert equivariance_error(f, C4, x, out_action=C4.act_fmap) < 1e-5


def test_3_3_group_conv_matches_equilib(mod):
    x, w = _rand(2, 3, 4, 8, 8, seed=4), _rand(2, 3, 4, 3, 3, seed=5)
    layer = enn.GroupConv2d(3, 2, 3, bias=False)
    with torch.no_grad():
        layer.conv.weight.copy_(w.reshape(2, 12, 3, 3))
        expect = layer(x)
    torch.testing.assert_close(mod.group_conv(x, w), expect, rtol=1e-4, atol=1e-5)
    f = lambda t: mod.group_conv(t, w)  # noqa: E731
    assert equivariance_error(f, C4, x, in_action=C4.act_fmap, out_action=C4.act_fmap) < 1e-5


def test_3_4_invariant_features(mod):
    y = _rand(2, 3, 4, 6, 6, seed=6)
    torch.testing.assert_close(mod.invariant_features(y), y.amax(dim=2).mean(dim=(-2, -1)))
    lift = enn.LiftingConv2d(1, 3, 3)
    x = _rand(3, 1, 8, 8, seed=7)
    f = lambda t: mod.invariant_features(torch.relu(lift(t)))  # noqa: E731
    assert invariance_error(f, C4, x) < 1e-5
    assert invariance_error(f, CyclicShifts(8, 8), x, elements=[(1, 0), (3, 5)]) < 1e-5
