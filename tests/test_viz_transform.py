"""Tests of equilib.viz.transform: what chapter 01's figures and explorer compute."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equilib.groups import CyclicShifts, Dihedral, Rotations, rotate, rotation_roundtrip_error
from equilib.viz.transform import (
    D4_LABELS,
    TRANSFORM_KINDS,
    action_law_table,
    cayley_table,
    make_transform,
    orbit,
    response,
    rotation_equivariance_errors,
    roundtrip_errors,
    transform_label,
)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _digitlike(n=16, seed=0):
    """A smooth blob in the middle of an empty (B=2, C=1, n, n) canvas."""
    small = F.interpolate(
        _rand(2, 1, n // 4, n // 4, seed=seed),
        size=(n // 2, n // 2),
        mode="bilinear",
        align_corners=False,
    )
    x = torch.zeros(2, 1, n, n, dtype=torch.float64)
    x[..., n // 4 : n // 4 + n // 2, n // 4 : n // 4 + n // 2] = small
    return x


# --------------------------------------------------------------------------- transforms


def test_make_transform_matches_torch():
    x = _rand(2, 1, 6, 6)
    assert torch.equal(make_transform("identity")(x), x)
    assert torch.equal(make_transform("rotation", angle=90)(x), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(make_transform("rotation", angle=-90)(x), torch.rot90(x, 3, dims=(2, 3)))
    assert torch.allclose(make_transform("rotation", angle=30)(x), rotate(x, math.pi / 6))
    expected = torch.rot90(torch.flip(x, dims=(3,)), 1, dims=(2, 3))
    assert torch.equal(make_transform("d4", element=(1, 1))(x), expected)
    assert torch.equal(make_transform("d4", element=(5, 0))(x), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(make_transform("shift", dy=2, dx=-1)(x), torch.roll(x, (2, -1), (2, 3)))


def test_make_transform_rejects_unknown_kinds_and_elements():
    with pytest.raises(ValueError, match="rotation"):
        make_transform("scale")
    with pytest.raises(ValueError, match="not an element"):
        make_transform("d4", element=(1, 2))
    with pytest.raises(ValueError, match="shift"):
        transform_label("scale")


def test_transform_labels():
    assert set(TRANSFORM_KINDS) == {"identity", "rotation", "d4", "shift"}
    assert list(D4_LABELS) == Dihedral(4).elements
    assert transform_label("rotation", angle=45) == "rotate 45 deg"
    assert transform_label("d4", element=(1, 1)) == "flip, rotate 90"
    assert transform_label("shift", dy=1, dx=-2) == "shift (1, -2)"
    # each D4 label describes what the element does: compare with the described operations
    x = _rand(1, 5, 5)
    for (k, f), label in D4_LABELS.items():
        described = torch.flip(x, dims=(-1,)) if label.startswith("flip") else x
        turns = int(label.split("rotate ")[1]) // 90 if "rotate" in label else 0
        described = torch.rot90(described, turns, dims=(-2, -1))
        assert torch.equal(make_transform("d4", element=(k, f))(x), described), label


# --------------------------------------------------------------------------- groups as tables


def test_orbit_stacks_every_transformed_copy():
    D = Dihedral(4)
    x = _rand(3, 1, 5, 5)
    out = orbit(D, x)
    assert out.shape == (8, 3, 1, 5, 5)
    for i, g in enumerate(D.elements):
        assert torch.equal(out[i], D.act(g, x))


@pytest.mark.parametrize("G", [Rotations(4), Dihedral(4), CyclicShifts(2, 3)], ids=repr)
def test_cayley_table_is_a_latin_square_that_agrees_with_the_action(G):
    T = cayley_table(G)
    n = G.order
    assert T.shape == (n, n) and T.dtype == torch.int64
    for r in range(n):
        assert sorted(T[r].tolist()) == list(range(n))
        assert sorted(T[:, r].tolist()) == list(range(n))
    x = _rand(1, 2, 3) if isinstance(G, CyclicShifts) else _rand(1, 4, 4)
    els = G.elements
    for i, a in enumerate(els):
        for j, b in enumerate(els):
            assert torch.equal(G.act(els[int(T[i, j])], x), G.act(a, G.act(b, x)))


def test_cayley_table_of_c4_is_addition_mod_4():
    T = cayley_table(Rotations(4))
    i = torch.arange(4)
    assert torch.equal(T, (i[:, None] + i[None, :]) % 4)


def test_action_law_table_zero_for_exact_groups_and_positive_for_interpolation():
    x = _digitlike(16)
    assert action_law_table(Dihedral(4), x).max() < 1e-12
    f = _rand(2, 8, 6, 6)
    assert action_law_table(Dihedral(4), f, fmap=True).max() < 1e-12
    E = action_law_table(Rotations(8), x)
    assert E.shape == (8, 8)
    even = torch.arange(0, 8, 2)
    assert E[even][:, even].max() < 1e-6  # quarter turns compose exactly
    assert E[1, 1] > 1e-3  # two 45-degree turns are not one exact quarter turn
    # oracle for one entry
    C8 = Rotations(8)
    expected = (C8.act(1, C8.act(3, x)) - C8.act(4, x)).norm() / x.norm()
    assert math.isclose(float(E[1, 3]), float(expected), rel_tol=1e-9)


# --------------------------------------------------------------------------- responses


def test_response_of_pixelwise_map_is_equivariant_to_d4():
    x = _rand(2, 1, 6, 6)
    r = response(torch.sigmoid, x, make_transform("d4", element=(3, 1)))
    assert r["error"] < 1e-12
    assert torch.equal(r["gx"], Dihedral(4).act((3, 1), x))
    assert torch.allclose(r["f_gx"], torch.sigmoid(r["gx"]))
    assert torch.allclose(r["g_fx"], Dihedral(4).act((3, 1), torch.sigmoid(x)))


def test_response_of_position_dependent_bias_matches_hand_computation():
    bias = _rand(6, 6, seed=1)
    f = lambda z: z + bias
    x = _rand(2, 1, 6, 6)
    g = make_transform("shift", dy=1, dx=2)
    r = response(f, x, g)
    expected = (f(g(x)) - g(f(x))).norm() / f(x).norm()
    assert r["error"] > 0.05
    assert math.isclose(r["error"], float(expected), rel_tol=1e-12)
    assert torch.allclose(r["diff"], r["f_gx"] - r["g_fx"])


def test_response_vector_outputs_default_to_invariance():
    x = _rand(2, 1, 6, 6)
    total = lambda z: z.sum(dim=(1, 2, 3))
    r = response(total, x, make_transform("rotation", angle=90))
    assert torch.equal(r["g_fx"], r["fx"]) and r["error"] < 1e-12
    top = lambda z: z[:, 0, 0, :]
    assert response(top, x, make_transform("rotation", angle=90))["error"] > 1e-2
    # explicit output actions
    r = response(torch.sigmoid, x, make_transform("shift", dx=1), out_transform="invariant")
    assert r["error"] > 1e-3
    roll = lambda y: y.roll(1, -1)
    r = response(torch.sigmoid, x, make_transform("shift", dx=1), out_transform=roll)
    assert r["error"] < 1e-12


def test_response_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        response(torch.sigmoid, torch.zeros(6, 6), make_transform("identity"))
    crop = lambda z: z[..., 1:-1, 1:-1]
    with pytest.raises(ValueError, match="out_transform"):
        response(crop, torch.zeros(1, 1, 6, 6), lambda z: z, out_transform=lambda y: y[..., 1:, :])
    with pytest.raises(ValueError, match="out_transform"):
        response(crop, torch.zeros(1, 1, 6, 6), lambda z: z, out_transform="sideways")


# --------------------------------------------------------------------------- rotation errors


def test_roundtrip_errors_zero_at_quarter_turns_and_match_groups():
    x = _digitlike(16)
    angles = [0, 90, 180, 270, 360, -90, 45, 30]
    err = roundtrip_errors(x, angles)
    assert err.shape == (len(angles),) and err.dtype == torch.float64
    assert err[:6].max() == 0.0
    assert err[6] > 1e-3 and err[7] > 1e-3
    for a, e in zip(angles, err.tolist()):
        assert math.isclose(e, rotation_roundtrip_error(x, math.radians(a)), abs_tol=1e-12)
    with pytest.raises(ValueError, match="at least one angle"):
        roundtrip_errors(x, [])


def test_rotation_equivariance_errors():
    x = _digitlike(16) * 4 - 2
    err = rotation_equivariance_errors(torch.sigmoid, x, [0, 90, 45, 180])
    assert err[0] == 0 and err[1] < 1e-12 and err[3] < 1e-12
    assert err[2] > 1e-3  # interpolation does not commute with a nonlinearity
    # oracle for the 45-degree entry
    R = lambda z: rotate(z, math.pi / 4)
    expected = (torch.sigmoid(R(x)) - R(torch.sigmoid(x))).norm() / torch.sigmoid(x).norm()
    assert math.isclose(float(err[2]), float(expected), rel_tol=1e-9)
    # a linear pixelwise map commutes with bilinear interpolation
    assert rotation_equivariance_errors(lambda z: 3 * z, x, [17, 45]).max() < 1e-12
    # invariance of the total mass under interpolated rotations holds only approximately
    mass = lambda z: z.sum(dim=(1, 2, 3))
    inv = rotation_equivariance_errors(mass, _digitlike(16), [90, 45], "invariant")
    assert inv[0] < 1e-12 and 0 < inv[1] < 0.2


# --------------------------------------------------------------------------- drawing and widget


def test_draw_response_and_explorer_smoke():
    """The drawing and the explorer run for image and vector outputs (no pixels compared)."""
    matplotlib = pytest.importorskip("matplotlib")
    pytest.importorskip("ipywidgets")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from equilib.widgets.transform import draw_response, transform_explorer

    x = _digitlike(16).float()
    for f, panels in ((torch.sigmoid, 6), (lambda z: z.flatten(1)[:, :10], 5)):
        fig = draw_response(response(f, x[:1], make_transform("rotation", angle=30)))
        # five panels, and for image outputs a colour bar that reads the difference's size
        assert len(fig.axes) == panels
        if panels == 5:  # vector outputs of [0, 1]: nothing drawn below 0 is wasted room
            assert fig.axes[2].get_ylim()[0] == pytest.approx(0.0)
            assert fig.axes[4].get_ylim()[0] < 0  # the difference has either sign
        plt.close(fig)
    box = transform_explorer(x, {"sigmoid": torch.sigmoid, "first ten": lambda z: z[:, 0, 0, :10]})
    controls = [w for column in box.children[0].children for w in column.children]
    kind = next(w for w in controls if w.description == "transform")
    for value in ("shift", "d4", "rotation"):
        kind.value = value
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        transform_explorer(x[0], {"sigmoid": torch.sigmoid})
    plt.close("all")
