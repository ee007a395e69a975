"""Grading tests of exercises/ex03_group_convolutions.py: against equilib.nn and equivariance."""

from __future__ import annotations

import pytest
import torch

from equilib import nn as enn
from equilib.groups import CyclicShifts, Dihedral, Rotations, equivariance_error, invariance_error

NAME = "ex03_group_convolutions"
C4 = Rotations(4)
D4 = Dihedral(4)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_3_1_rotated_filters(mod):
    w = _rand(2, 3, 5, 5)
    out = mod.rotated_filters(w)
    assert tuple(out.shape) == (4, 2, 3, 5, 5), f"expected (4, C', C, k, k), got {tuple(out.shape)}"
    torch.testing.assert_close(out[0], w, msg="entry 0 is the filter itself (no turn)")
    # a quarter turn maps the top-right tap to the top-left (counter-clockwise)
    torch.testing.assert_close(
        out[1][..., 0, 0],
        w[..., 0, 4],
        msg="entry 1 should be turned counter-clockwise, as chapter 03's rot",
    )
    for g in range(4):
        torch.testing.assert_close(
            out[(g + 1) % 4],
            torch.rot90(out[g], 1, dims=(-2, -1)),
            msg="each entry is the previous one turned by a quarter turn",
        )


def _conv(x, w):
    """Circular 'same' cross-correlation, written here: x (B, C, H, W), w (C', C, k, k)."""
    p = w.shape[-1] // 2
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (p, p, p, p), mode="circular"), w)


def _shape(got, expect):
    assert tuple(got.shape) == expect, (
        f"expected {expect} (B, C', 8, H, W): one slice per element of D4; got {tuple(got.shape)}"
    )


def _each_slice(got, expect, message):
    """Slice i of the group axis of ``got`` against ``expect(g)`` for g = D4.elements[i]."""
    for i, g in enumerate(D4.elements):
        torch.testing.assert_close(got[:, :, i], expect(g), rtol=1e-4, atol=1e-5, msg=message(i, g))


def test_3_2_d4_lifting_conv_other_way_round(mod):
    """Slice g is conv(x, g.w) = g.conv(g^-1.x, w): transform the image instead of the filter."""
    x, w = _rand(2, 2, 8, 8), _rand(3, 2, 3, 3, seed=1)
    got = mod.d4_lifting_conv(x, w)
    _shape(got, (2, 3, 8, 8, 8))
    _each_slice(
        got,
        lambda g: D4.act(g, _conv(D4.act(D4.inverse(g), x), w)),
        lambda i, g: (
            f"slice {i} should be the convolution with the filter transformed by {g}, "
            f"D4.elements[{i}] (first mirror if flip, then turn)"
        ),
    )


def test_3_2_d4_lifting_conv_is_equivariant(mod):
    x, w = _rand(2, 1, 10, 10, seed=2), _rand(2, 1, 5, 5, seed=3)
    f = lambda t: mod.d4_lifting_conv(t, w)  # noqa: E731
    for g in D4.elements:
        err = equivariance_error(f, D4, x, out_action=D4.act_fmap, elements=[g])
        assert err < 1e-5, (
            f"transforming the input by {g} should act on the output by D4's regular "
            f"representation (relative error {err:.2e})"
        )


def test_3_3_d4_group_conv_identity_slice(mod):
    """Slice e (the identity) uses the filter as it is: one multi-channel convolution."""
    x, w = _rand(2, 3, 8, 6, 6, seed=4), _rand(2, 3, 8, 3, 3, seed=5)
    got = mod.d4_group_conv(x, w)
    _shape(got, (2, 2, 8, 6, 6))
    torch.testing.assert_close(
        got[:, :, 0],
        _conv(x.flatten(1, 2), w.flatten(1, 2)),
        rtol=1e-4,
        atol=1e-5,
        msg="slice 0 (the identity) should sum conv(x[:, c, h], w[:, c, h]) over c and h",
    )


def test_3_3_d4_group_conv_other_way_round(mod):
    """y(x)_g = g.(y(g^-1.x)_e): transform the input feature map instead of the filter."""
    x, w = _rand(2, 3, 8, 6, 6, seed=6), _rand(2, 3, 8, 3, 3, seed=7)
    got = mod.d4_group_conv(x, w)
    _shape(got, (2, 2, 8, 6, 6))
    _each_slice(
        got,
        lambda g: D4.act(g, _conv(D4.act_fmap(D4.inverse(g), x).flatten(1, 2), w.flatten(1, 2))),
        lambda i, g: (
            f"slice {i} (element {g}) differs: is each small image of w transformed "
            f"by {g} and moved along the group axis as g moves the elements?"
        ),
    )


def test_3_3_d4_group_conv_is_equivariant(mod):
    x, w = _rand(2, 2, 8, 7, 7, seed=8), _rand(3, 2, 8, 3, 3, seed=9)
    f = lambda t: mod.d4_group_conv(t, w)  # noqa: E731
    for g in D4.elements:
        err = equivariance_error(
            f, D4, x, in_action=D4.act_fmap, out_action=D4.act_fmap, elements=[g]
        )
        assert err < 1e-5, (
            f"the group convolution should commute with D4's regular representation; for {g} "
            f"the relative error is {err:.2e}"
        )


def test_3_4_invariant_features(mod):
    y = _rand(2, 3, 4, 6, 6, seed=6)
    torch.testing.assert_close(
        mod.invariant_features(y),
        y.amax(dim=2).mean(dim=(-2, -1)),
        msg="expected the maximum over orientations, then the mean over space",
    )
    lift = enn.LiftingConv2d(1, 3, 3)
    x = _rand(3, 1, 8, 8, seed=7)
    f = lambda t: mod.invariant_features(torch.relu(lift(t)))  # noqa: E731
    assert invariance_error(f, C4, x) < 1e-5, "the features change when the input is turned"
    assert invariance_error(f, CyclicShifts(8, 8), x, elements=[(1, 0), (3, 5)]) < 1e-5, (
        "the features change when the input is shifted"
    )


def _invariant_dimension(k):
    """dim of {w : rot90(w) = w} = k*k - rank(R - I), R the quarter turn as a k*k matrix."""
    eye = torch.eye(k * k, dtype=torch.float64).view(k * k, k, k)
    R = torch.rot90(eye, 1, dims=(-2, -1)).reshape(k * k, k * k).T
    return k * k - int(torch.linalg.matrix_rank(R - torch.eye(k * k, dtype=torch.float64)))


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_3_5_rotation_invariant_basis(mod, k):
    basis = mod.rotation_invariant_basis(k).double()
    n = _invariant_dimension(k)
    assert basis.ndim == 3 and tuple(basis.shape[1:]) == (k, k), (
        f"expected a tensor (n, {k}, {k}), got {tuple(basis.shape)}"
    )
    for w in basis:
        torch.testing.assert_close(
            torch.rot90(w, 1), w, msg="a basis filter changes under a quarter turn"
        )
    gram = basis.flatten(1) @ basis.flatten(1).T
    torch.testing.assert_close(
        gram,
        torch.eye(len(basis), dtype=torch.float64),
        atol=1e-10,
        rtol=0,
        msg="the basis filters should be orthonormal as vectors of k*k numbers",
    )
    assert len(basis) == n, (
        f"k={k}: you found {len(basis)} independent rotation-invariant filters; are there more (or "
        "fewer)? Count the groups of taps that a quarter turn moves among each other"
    )
    # any combination gives a plain convolution that commutes with quarter turns
    coef = torch.randn(len(basis), generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    w = (coef[:, None, None] * basis).sum(0)[None, None]
    x = _rand(2, 1, 9, 9, seed=9).double()
    err = equivariance_error(lambda t: mod.conv(t, w), C4, x)
    assert err < 1e-10, "a combination of your filters does not give a rotation-equivariant conv"
