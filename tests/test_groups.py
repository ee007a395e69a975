"""Tests of equilib.groups: group axioms, the action law, rotations on the grid, equivariance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from equilib.groups import (
    CyclicShifts,
    Dihedral,
    Rotations,
    SO2Grid,
    Trivial,
    equivariance_error,
    flip,
    invariance_error,
    rotate,
    rotation_roundtrip_error,
    shift,
)

GROUPS = {
    "shifts": lambda: CyclicShifts(5, 4),
    "c4": lambda: Rotations(4),
    "c8": lambda: Rotations(8),
    "d4": lambda: Dihedral(4),
    "trivial": lambda: Trivial(),
}
EXACT = ["shifts", "c4", "d4", "trivial"]


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _blob(n=12, batch=2, seed=0):
    """Smooth images with an empty border: rotations keep (almost) all their mass."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, n // 4, n // 4, generator=g, dtype=torch.float64)
    x = F.interpolate(x, size=(n // 2, n // 2), mode="bilinear", align_corners=False)
    out = torch.zeros(batch, 1, n, n, dtype=torch.float64)
    out[..., n // 4 : n // 4 + n // 2, n // 4 : n // 4 + n // 2] = x
    return out


def _images_for(name):
    return _rand(2, 3, 5, 4) if name == "shifts" else _rand(2, 3, 6, 6)


# --------------------------------------------------------------------------- group axioms


@pytest.mark.parametrize("name", list(GROUPS))
def test_group_axioms(name):
    G = GROUPS[name]()
    els = G.elements
    assert len(set(els)) == G.order == len(G)
    e = G.identity
    for a in els:
        assert G.compose(e, a) == a and G.compose(a, e) == a
        assert G.compose(a, G.inverse(a)) == e and G.compose(G.inverse(a), a) == e
    for a, b in itertools.product(els, els):
        assert G.compose(a, b) in els  # closure
    for a, b, c in itertools.product(els, els, els):
        assert G.compose(G.compose(a, b), c) == G.compose(a, G.compose(b, c))


def test_group_orders():
    assert Rotations(4).order == 4 and Rotations(8).order == 8
    assert Dihedral(4).order == 8 and CyclicShifts(3, 5).order == 15
    assert SO2Grid(16).order == 16 and Trivial().order == 1


def test_dihedral_is_not_abelian_and_flips_reverse_rotations():
    D = Dihedral(4)
    r, s = (1, 0), (0, 1)
    assert D.compose(r, s) != D.compose(s, r)
    # s r s = r^-1
    assert D.compose(s, D.compose(r, s)) == D.inverse(r)
    # every flip is its own inverse
    for k in range(4):
        assert D.compose((k, 1), (k, 1)) == (0, 0)


def test_rotation_group_is_cyclic():
    C = Rotations(6)
    g = C.identity
    seen = []
    for _ in range(6):
        seen.append(g)
        g = C.compose(1, g)
    assert g == C.identity and sorted(seen) == C.elements


# --------------------------------------------------------------------------- action law


def _action_law_error(G, x, act):
    """max over g, h of |g.(h.x) - (gh).x| / |x|."""
    worst = 0.0
    for g, h in itertools.product(G.elements, G.elements):
        lhs = act(g, act(h, x))
        rhs = act(G.compose(g, h), x)
        worst = max(worst, float((lhs - rhs).norm() / x.norm()))
    return worst


@pytest.mark.parametrize("name", EXACT)
def test_action_law_on_images_exact(name):
    G = GROUPS[name]()
    x = _images_for(name)
    assert _action_law_error(G, x, G.act) < 1e-6
    # the identity acts trivially, and every element is invertible by its inverse
    assert torch.equal(G.act(G.identity, x), x)
    for g in G.elements:
        assert torch.allclose(G.act(G.inverse(g), G.act(g, x)), x, atol=1e-6)


@pytest.mark.parametrize("name", ["c4", "d4", "trivial"])
def test_action_law_on_feature_maps_exact(name):
    G = GROUPS[name]()
    x = _rand(2, 3, G.order, 6, 6, seed=1)
    assert _action_law_error(G, x, G.act_fmap) < 1e-6


def test_shift_act_fmap_acts_on_every_channel():
    G = CyclicShifts(5, 4)
    x = _rand(2, 3, 5, 4)
    assert _action_law_error(G, x, G.act_fmap) < 1e-6
    assert torch.equal(G.act_fmap((1, 2), x), torch.roll(x, (1, 2), dims=(-2, -1)))


def test_act_fmap_matches_regular_representation_oracle():
    """(g.f)[gh] = g.(f[h]), written out index by index for D4 and C4."""
    for G in (Dihedral(4), Rotations(4)):
        f = _rand(2, G.order, 5, 5, seed=2)
        for g in G.elements:
            out = G.act_fmap(g, f)
            for j, h in enumerate(G.elements):
                i = G.index(G.compose(g, h))
                assert torch.allclose(out[:, i], G.act(g, f[:, j]), atol=1e-12)


def test_act_fmap_lifting_is_equivariant():
    """Lifting F(x)[h] = h.phi(h^-1.x) is equivariant with the regular action on its output."""
    D = Dihedral(4)
    w = _rand(1, 1, 3, 3, seed=3)
    phi = lambda z: F.conv2d(z, w, padding=1)

    def lift(x):
        return torch.stack([D.act(h, phi(D.act(D.inverse(h), x))) for h in D.elements], dim=-3)

    x = _rand(2, 1, 7, 7, seed=4)
    err = equivariance_error(lift, D, x, out_action="fmap")
    assert err < 1e-10
    # an ordinary (asymmetric) conv is not equivariant to D4: the test has teeth
    assert equivariance_error(phi, D, x) > 1e-2


def test_interpolated_rotations_obey_the_action_law_only_approximately():
    C8 = Rotations(8)
    x = _blob(16)
    err = _action_law_error(C8, x, C8.act)
    assert 1e-3 < err < 0.3
    # pairs of exact elements are still exact
    for g, h in itertools.product([0, 2, 4, 6], repeat=2):
        assert torch.allclose(C8.act(g, C8.act(h, x)), C8.act(C8.compose(g, h), x), atol=1e-6)
    assert C8.is_exact(2) and not C8.is_exact(1)


# --------------------------------------------------------------------------- transforms


def test_rotate_agrees_with_rot90_at_quarter_turns():
    x = _rand(3, 2, 7, 7, dtype=torch.float32)
    for k in range(-4, 5):
        out = rotate(x, k * math.pi / 2)
        assert torch.allclose(out, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5), k
    assert torch.allclose(rotate(x, 0.0), x, atol=1e-6)


def test_rot90_turns_counter_clockwise_like_rotate():
    """A pixel right of centre goes above centre after a counter-clockwise quarter turn."""
    x = torch.zeros(1, 5, 5)
    x[0, 2, 4] = 1.0  # row 2 (centre), column 4 (right)
    for out in (rotate(x, math.pi / 2), Rotations(4).act(1, x)):
        r, c = divmod(int(out.abs().argmax()), 5)
        assert (r, c) == (0, 2)


def test_rotate_per_image_angles_match_one_at_a_time():
    x = _rand(3, 2, 8, 8, dtype=torch.float32)
    angles = torch.tensor([0.3, -1.1, 2.0])
    out = rotate(x, angles)
    for i in range(3):
        assert torch.allclose(out[i], rotate(x[i], float(angles[i])), atol=1e-6)


def test_rotate_is_differentiable_in_angle():
    x = _blob(12)
    a = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    (rotate(x, a) ** 2).sum().backward()
    eps = 1e-5
    fd = ((rotate(x, 0.4 + eps) ** 2).sum() - (rotate(x, 0.4 - eps) ** 2).sum()) / (2 * eps)
    assert torch.isclose(a.grad, fd, rtol=1e-3, atol=1e-6)


def test_shift_and_flip_match_torch():
    x = _rand(2, 4, 5)
    assert torch.equal(shift(x, 1, -2), torch.roll(x, (1, -2), dims=(-2, -1)))
    assert torch.equal(flip(x), x[..., torch.arange(4, -1, -1)])


def test_d4_flip_element_is_the_mirror_image():
    D = Dihedral(4)
    x = _rand(1, 6, 6)
    assert torch.equal(D.act((0, 1), x), torch.flip(x, dims=(-1,)))
    assert torch.equal(D.act((1, 1), x), torch.rot90(torch.flip(x, dims=(-1,)), 1, dims=(-2, -1)))


def test_rotation_roundtrip_error():
    x = _blob(16)
    for k in range(5):
        assert rotation_roundtrip_error(x, k * math.pi / 2) < 1e-6
    for deg in (10, 30, 45, 100):
        err = rotation_roundtrip_error(x, math.radians(deg))
        assert 1e-3 < err < 0.5, (deg, err)
    # oracle: the definition written out
    a = math.radians(30)
    back = rotate(rotate(x, a), -a)
    assert math.isclose(
        rotation_roundtrip_error(x, a), float((back - x).norm() / x.norm()), rel_tol=1e-9
    )


# --------------------------------------------------------------------------- equivariance


def test_equivariance_error_zero_for_circular_conv_and_shifts():
    w = _rand(2, 3, 3, 3, seed=5)
    f = lambda z: F.conv2d(F.pad(z, (1, 1, 1, 1), mode="circular"), w)
    x = _rand(2, 3, 6, 5, seed=6)
    assert equivariance_error(f, CyclicShifts(6, 5), x) < 1e-10


def test_equivariance_error_positive_for_position_dependent_bias():
    bias = _rand(6, 5, seed=7)
    f = lambda z: z + bias
    x = _rand(2, 3, 6, 5, seed=6)
    G = CyclicShifts(6, 5)
    err = equivariance_error(f, G, x)
    assert err > 0.05
    # oracle: the largest |f(g.x) - g.f(x)| / |f(x)| computed by hand
    fx = f(x)
    expected = max(float((f(G.act(g, x)) - G.act(g, fx)).norm() / fx.norm()) for g in G.elements)
    assert math.isclose(err, expected, rel_tol=1e-9)


def test_equivariance_error_out_actions():
    x = _rand(2, 1, 6, 6, seed=8)
    C4 = Rotations(4)
    total = lambda z: z.sum(dim=(-2, -1))
    assert invariance_error(total, C4, x) < 1e-10
    assert equivariance_error(total, C4, x, out_action="invariant") < 1e-10
    assert equivariance_error(total, C4, x, out_action=lambda g, y: y) < 1e-10
    # the top row is not invariant to rotations
    top = lambda z: z[..., 0, :].sum(-1)
    assert invariance_error(top, C4, x) > 1e-2
    # restricting to the identity gives zero
    assert equivariance_error(top, C4, x, out_action="invariant", elements=[0]) == 0.0


def test_equivariance_error_pixelwise_maps_exact_for_permutations_not_for_interpolation():
    f = torch.sigmoid
    x = _blob(16) * 4 - 2
    assert equivariance_error(f, Dihedral(4), x) < 1e-12
    assert equivariance_error(f, Rotations(8), x) > 1e-3


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("G", [Rotations(4), Rotations(8), Dihedral(4)], ids=repr)
def test_rotation_groups_reject_non_square_images(G):
    with pytest.raises(ValueError, match="square"):
        G.act(G.elements[1], torch.zeros(2, 5, 6))


def test_rotate_rejects_non_square_and_bad_angles():
    with pytest.raises(ValueError, match="square"):
        rotate(torch.zeros(1, 4, 5), 0.1)
    with pytest.raises(ValueError, match="angle"):
        rotate(torch.zeros(3, 4, 4), torch.zeros(2))


@pytest.mark.parametrize("make", [Rotations, Dihedral, SO2Grid])
@pytest.mark.parametrize("N", [0, -1, 2.0])
def test_bad_orders(make, N):
    with pytest.raises(ValueError, match="positive integer"):
        make(N)


@pytest.mark.parametrize("H, W", [(0, 3), (3, -1), (2.5, 2)])
def test_bad_shift_sizes(H, W):
    with pytest.raises(ValueError, match="positive integer"):
        CyclicShifts(H, W)


@pytest.mark.parametrize("name", list(GROUPS))
def test_images_need_two_dims(name):
    G = GROUPS[name]()
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        G.act(G.identity, torch.zeros(5))
    for fn in (lambda z: rotate(z, 0.1), lambda z: shift(z, 1, 1), flip):
        with pytest.raises(ValueError, match="at least 2 dims"):
            fn(torch.zeros(5))


def test_non_tensor_images_raise_type_error():
    with pytest.raises(TypeError, match="torch.Tensor"):
        Rotations(4).act(1, [[0.0, 1.0], [1.0, 0.0]])


def test_shift_group_rejects_wrong_image_size():
    with pytest.raises(ValueError, match=r"\(\.\.\., 5, 4\)"):
        CyclicShifts(5, 4).act((1, 1), torch.zeros(2, 4, 5))


@pytest.mark.parametrize("G", [Rotations(4), Rotations(8), Dihedral(4)], ids=repr)
def test_act_fmap_rejects_wrong_group_axis(G):
    with pytest.raises(ValueError, match=f"{G.order}, H, W"):
        G.act_fmap(G.identity, torch.zeros(2, G.order + 1, 6, 6))
    with pytest.raises(ValueError, match="group axis|H, W"):
        G.act_fmap(G.identity, torch.zeros(6, 6))


def test_unknown_elements_and_actions():
    with pytest.raises(ValueError, match="not an element"):
        Rotations(4).act(4, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="not an element"):
        Dihedral(4).act((1, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="invariant"):
        equivariance_error(lambda z: z, Rotations(4), torch.ones(3, 3), out_action="nope")
    with pytest.raises(TypeError, match="Group"):
        equivariance_error(lambda z: z, "c4", torch.ones(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        equivariance_error(lambda z: z / 0.0, Rotations(4), torch.ones(3, 3))


def test_malformed_elements_and_orders_are_refused_clearly():
    with pytest.raises(ValueError, match="not an element"):
        Dihedral(4).act([1, 0], torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="positive integer"):
        Rotations(True)
    with pytest.raises(TypeError, match="floating-point"):
        rotate(torch.zeros(1, 4, 4, dtype=torch.int64), 0.3)
