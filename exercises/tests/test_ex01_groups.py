"""Grading tests of exercises/ex01_groups.py: compared against equilib.groups and oracles."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from equilib.groups import CyclicShifts, Dihedral, Rotations, equivariance_error

NAME = "ex01_groups"


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- Exercise 1.1


def test_1_1_d4_compose_matches_equilib(mod):
    D4 = Dihedral(4)
    for a, b in itertools.product(D4.elements, D4.elements):
        got = mod.d4_compose(a, b)
        assert tuple(got) == D4.compose(a, b), (
            f"d4_compose({a}, {b}) = {got} is not the element 'first {b}, then {a}' of D4"
        )


def test_1_1_d4_compose_obeys_the_action_law(mod):
    x = _rand(5, 5)
    D4 = Dihedral(4)
    for a, b in itertools.product(D4.elements, D4.elements):
        lhs = mod.d4_act(a, mod.d4_act(b, x))
        assert torch.equal(lhs, mod.d4_act(tuple(mod.d4_compose(a, b)), x)), (
            f"the action law fails for a={a}, b={b}: acting with b then a differs from acting "
            f"with d4_compose(a, b)"
        )


def test_1_1_d4_is_not_commutative(mod):
    assert mod.d4_compose((1, 0), (0, 1)) != mod.d4_compose((0, 1), (1, 0)), (
        "turn-after-mirror and mirror-after-turn must differ: D4 is not commutative"
    )


# --------------------------------------------------------------------------- Exercise 1.2


def test_1_2_regular_action_matches_equilib(mod):
    C4 = Rotations(4)
    f = _rand(2, 3, 4, 5, 5, seed=1)
    for g in range(4):
        assert torch.allclose(mod.c4_regular_action(g, f), C4.act_fmap(g, f), atol=1e-12), (
            f"g={g}: not the regular representation of chapter 01, section 3"
        )


def test_1_2_regular_action_oracle_index_by_index(mod):
    f = _rand(4, 6, 6, seed=2)
    for g in range(4):
        out = mod.c4_regular_action(g, f)
        for h in range(4):
            expected = torch.rot90(f[h], g, dims=(-2, -1))
            assert torch.allclose(out[(g + h) % 4], expected), (
                f"g={g}: the slice that was at h={h} should sit at g+h, turned by g quarter turns"
            )


def test_1_2_regular_action_law(mod):
    f = _rand(2, 4, 5, 5, seed=3)
    for g, h in itertools.product(range(4), range(4)):
        lhs = mod.c4_regular_action(g, mod.c4_regular_action(h, f))
        assert torch.allclose(lhs, mod.c4_regular_action((g + h) % 4, f)), (
            f"the action law fails for g={g}, h={h}"
        )


def test_1_2_keeps_shapes_and_rejects_wrong_group_axis(mod):
    f = _rand(3, 4, 6, 6, seed=12)
    assert torch.allclose(mod.c4_regular_action(0, f), f), (
        "the identity element must change nothing"
    )
    with pytest.raises(ValueError):
        mod.c4_regular_action(1, torch.zeros(2, 3, 5, 5))


# --------------------------------------------------------------------------- Exercise 1.3


def _pairs(G):
    return [(lambda z, g=g: G.act(g, z), lambda z, g=g: G.act(g, z)) for g in G.elements]


def test_1_3_matches_equilib_equivariance_error(mod):
    x = _rand(3, 1, 8, 8, seed=4)
    bias = _rand(8, 8, seed=5)
    weight = _rand(1, 1, 3, 3, seed=6)
    functions = {
        "sigmoid": torch.sigmoid,
        "bias": lambda z: z + bias,
        "conv": lambda z: F.conv2d(F.pad(z, (1, 1, 1, 1), mode="circular"), weight),
    }
    for G in (Dihedral(4), CyclicShifts(8, 8), Rotations(8)):
        for name, f in functions.items():
            got = mod.max_equivariance_error(f, _pairs(G), x)
            assert isinstance(got, float), f"expected a float, got {type(got).__name__}"
            expected = equivariance_error(f, G, x)
            assert abs(got - expected) <= 1e-9 * max(1.0, expected), (
                f"for {name} under {G}: got {got}, the largest relative error is {expected}"
            )


def test_1_3_distinguishes_equivariant_from_not(mod):
    x = _rand(2, 1, 6, 6, seed=7)
    pairs = _pairs(CyclicShifts(6, 6))
    assert mod.max_equivariance_error(torch.sigmoid, pairs, x) < 1e-12, (
        "a pixelwise map is shift-equivariant: its error should be zero"
    )
    assert mod.max_equivariance_error(lambda z: z + _rand(6, 6, seed=8), pairs, x) > 0.05, (
        "adding a fixed image is not shift-equivariant: its error should be large"
    )


def test_1_3_invariance_and_edge_cases(mod):
    x = _rand(2, 1, 6, 6, seed=9)
    total = lambda z: z.sum(dim=(-2, -1))
    C4 = Rotations(4)
    inv_pairs = [(lambda z, g=g: C4.act(g, z), lambda y: y) for g in C4.elements]
    assert mod.max_equivariance_error(total, inv_pairs, x) < 1e-12, (
        "the total ink is invariant to turns"
    )
    assert mod.max_equivariance_error(total, [], x) == 0.0, "no pairs: the error is 0"
    # an all-zero output is measured on an absolute scale
    zero = lambda z: torch.zeros_like(z)
    assert mod.max_equivariance_error(zero, inv_pairs, x) == 0.0, (
        "an all-zero output is measured on the scale |f(x)| = 1, and its error is 0"
    )
    # the error is relative: scaling f does not change it
    f1 = lambda z: z[..., 0, :]
    f2 = lambda z: 1000 * z[..., 0, :]
    e1 = mod.max_equivariance_error(f1, inv_pairs, x)
    e2 = mod.max_equivariance_error(f2, inv_pairs, x)
    assert e1 > 1e-2 and abs(e1 - e2) < 1e-9, (
        "the error is relative to |f(x)|: scaling f must not change it"
    )


# --------------------------------------------------------------------------- Exercise 1.4


def test_1_4_box_blur_matches_circular_conv(mod):
    x = _rand(2, 1, 6, 7, seed=10)
    kernel = torch.full((1, 1, 3, 3), 1 / 9, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), kernel)
    got = mod.box_blur(x)
    assert got.shape == x.shape, (
        f"expected the shape of x, {tuple(x.shape)}, got {tuple(got.shape)}"
    )
    assert torch.allclose(got, expected, atol=1e-12), (
        "each pixel should become the mean of its 3x3 neighbourhood, wrapping around the borders"
    )


def test_1_4_box_blur_on_one_pixel(mod):
    x = torch.zeros(5, 5, dtype=torch.float64)
    x[0, 0] = 9.0
    out = mod.box_blur(x)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for a, b in itertools.product((-1, 0, 1), repeat=2):
        expected[a % 5, b % 5] = 1.0
    assert torch.allclose(out, expected), (
        "one bright pixel should spread evenly over its 3x3 neighbourhood, wrapping around"
    )


def test_1_4_box_blur_is_shift_and_d4_equivariant(mod):
    x = _rand(2, 1, 6, 6, seed=11)
    assert equivariance_error(mod.box_blur, CyclicShifts(6, 6), x) < 1e-12, (
        "the blur should commute with shifts"
    )
    assert equivariance_error(mod.box_blur, Dihedral(4), x) < 1e-12, (
        "the blur should commute with D4"
    )


# --------------------------------------------------------------------------- Exercise 1.5


def _d4_invariant_kernel(k, seed):
    """A random D4-invariant kernel built independently: one value per distance pattern from the
    centre (the unordered pair of |row offset|, |column offset|)."""
    g = torch.Generator().manual_seed(seed)
    c = k // 2
    values = {}
    out = torch.empty(k, k, dtype=torch.float64)
    for i, j in itertools.product(range(k), range(k)):
        key = tuple(sorted((abs(i - c), abs(j - c))))
        if key not in values:
            values[key] = torch.randn((), generator=g, dtype=torch.float64)
        out[i, j] = values[key]
    return out


@pytest.mark.parametrize("k", [3, 5])
def test_1_5_symmetrized_kernel_gives_an_equivariant_convolution(mod, k):
    w = torch.randn(k, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    s = mod.d4_symmetrize(w)
    assert tuple(s.shape) == (k, k), f"expected a ({k}, {k}) kernel, got {tuple(s.shape)}"
    x = _rand(3, 1, 9, 9, seed=20)
    err = equivariance_error(lambda z: mod.circular_conv(z, s), Dihedral(4), x)
    assert err < 1e-10, (
        f"the convolution with your kernel is not D4-equivariant (relative error {err:.2e}): "
        "which kernels make chapter 01's blur equivariant?"
    )


@pytest.mark.parametrize("k", [3, 5])
def test_1_5_no_equivariant_kernel_is_closer(mod, k):
    w = torch.randn(k, k, generator=torch.Generator().manual_seed(10 + k), dtype=torch.float64)
    s = mod.d4_symmetrize(w)
    for seed in range(4):
        v = _d4_invariant_kernel(k, seed)
        # s is the nearest point of the equivariant kernels iff w - s is orthogonal to all of them
        inner = float(((w - s) * v).sum())
        assert abs(inner) < 1e-9 * float(v.norm() * w.norm()), (
            "another kernel with an equivariant convolution is closer to w than yours: the "
            "change you make should be as small as possible"
        )
    assert torch.allclose(mod.d4_symmetrize(s), s, atol=1e-12), (
        "a kernel that is already symmetric should come back unchanged"
    )
