"""Grading tests of exercises/ex04_soft_equivariance.py: against equilib.nn and dense oracles."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from equilib import nn as enn
from equilib.models import build, path_norms
from equilib.viz.connectivity import layer_matrix

NAME = "ex04_soft_equivariance"
# what the exercises ask you to write, which chapter 04 calls from the library
FORBIDDEN = [("4.3", layer_matrix), ("4.4", path_norms)]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_4_1_ffc_forward_matches_factored_linear(mod):
    layer = enn.FactoredLinear((3, 4, 5), (2, 3, 2))
    with torch.no_grad():
        layer.v.bias.normal_()
        U, V = layer.factors()
        x = _rand(4, 3, 4, 5)
        expect = layer(x)
        got = mod.ffc_forward(x, U, V, layer.v.bias, (3, 2))
    assert tuple(got.shape) == (4, 2, 3, 2), f"expected (B, C', H', W'), got {tuple(got.shape)}"
    torch.testing.assert_close(
        got,
        expect,
        rtol=1e-5,
        atol=1e-5,
        msg="the output differs from chapter 04's factored FC layer",
    )


def test_4_1_ffc_forward_matches_the_effective_weight(mod):
    U, V, b = _rand(2, 3, 6, seed=1), _rand(2, 3, 4, seed=2), _rand(2, 4, seed=3)
    x = _rand(5, 3, 2, 3, seed=4)
    W = torch.einsum("dcy,dcx->dycx", V, U).reshape(8, 18)  # materialised only in the test
    expect = (x.reshape(5, 18) @ W.T + b.reshape(-1)).view(5, 2, 2, 2)
    torch.testing.assert_close(
        mod.ffc_forward(x, U, V, b, (2, 2)),
        expect,
        rtol=1e-5,
        atol=1e-5,
        msg="the output differs from the FC layer with the effective weight V U",
    )


class _CountNumbers(TorchFunctionMode):
    """Counts the numbers that torch functions and tensor methods hand back while it is on."""

    def __init__(self):
        super().__init__()
        self.numbers = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numbers += t.numel()
        return out


def test_4_1_ffc_forward_never_forms_W(mod, within_memory):
    """Megapixel images: W would hold 2^40 numbers (4 TiB); the factored pass needs megabytes."""
    # first at 64x64, counting the numbers the pass computes: W, or W row by row, is 4096^2 of
    # them; a pass whose work grows with X + Y computes a few times the size of its inputs
    g = torch.Generator().manual_seed(5)
    small = 64 * 64
    x = torch.rand(2, 1, 64, 64, generator=g)
    U, V = torch.randn(1, 1, small, generator=g), torch.randn(1, 1, small, generator=g)
    b = torch.randn(1, small, generator=g)
    with _CountNumbers() as count:
        mod.ffc_forward(x, U, V, b, (64, 64))
    inputs = x.numel() + U.numel() + V.numel() + b.numel()
    assert count.numbers < 50 * inputs, (
        f"on 64x64 images your forward pass computed {count.numbers:,} numbers, where W has "
        f"{small * small:,} and the inputs {inputs:,}: it forms W, or W piece by piece (a row "
        "at a time, say), so its work grows with X * Y; do the sum over input positions first "
        "(chapter 04, 'Cheaper relaxations: factored and sparsified layers')"
    )
    g = torch.Generator().manual_seed(6)
    side = 1024
    x = torch.rand(2, 1, side, side, generator=g)
    U, V = torch.randn(1, 1, side * side, generator=g), torch.randn(1, 1, side * side, generator=g)
    b = torch.randn(1, side * side, generator=g)
    # out[b, 0, y] = V[y] sum_x U[x] x[b, x] + bias[y]: computed here in float64
    expect = V[0, 0].double() * (x.flatten(1).double() @ U[0, 0].double())[:, None] + b.double()
    got = within_memory(
        4 << 30,
        lambda: mod.ffc_forward(x, U, V, b, (side, side)),
        f"on {side}x{side} images your forward pass forms W, or another tensor with both an "
        "input and an output position axis: do the sum over input positions first (chapter 04, "
        "'Cheaper relaxations: factored and sparsified layers')",
    )
    assert tuple(got.shape) == (2, 1, side, side), (
        f"expected (B, C', H', W') = (2, 1, {side}, {side}), got {tuple(got.shape)}"
    )
    torch.testing.assert_close(
        got.double().reshape(2, -1),
        expect,
        rtol=1e-4,
        atol=1e-3,
        msg="the output differs from the factored FC layer on large images",
    )


def test_4_2_rbf_interpolation_matches_equilib(mod):
    for size, anchors in [((5, 5), 3), ((6, 4), (3, 2))]:
        Z = enn.anchor_grid(size, anchors)
        h, w = size
        G = torch.tensor([[i, j] for i in range(h) for j in range(w)], dtype=torch.float64)
        a = (anchors, anchors) if isinstance(anchors, int) else anchors
        ls = max((h - 1) / (a[0] - 1), (w - 1) / (a[1] - 1))
        Psi = mod.rbf_interpolation(Z, G, ls, 1e-6)
        assert tuple(Psi.shape) == (len(Z), h * w)
        torch.testing.assert_close(
            Psi.float(),
            enn.rbf_basis(size, anchors),
            rtol=1e-4,
            atol=1e-5,
            msg="Psi differs from the sparsified layer's basis",
        )


def test_4_2_rbf_interpolates_anchor_values(mod):
    Z = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    Psi = mod.rbf_interpolation(Z, Z, 1.0, 1e-10)  # evaluated at the anchors: identity
    torch.testing.assert_close(
        Psi,
        torch.eye(3, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
        msg="evaluated at the anchors, the interpolation returns the anchor values",
    )


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_4_3_conv_as_fc(mod, padding_mode):
    conv = enn.conv2d(2, 3, 3, padding_mode=padding_mode)
    with torch.no_grad():
        conv.bias.normal_()
    fc = mod.conv_as_fc(conv, (2, 5, 6))
    assert isinstance(fc, enn.ImageLinear), f"expected an ImageLinear, got {type(fc).__name__}"
    x = _rand(4, 2, 5, 6, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(
            fc(x),
            conv(x),
            rtol=1e-5,
            atol=1e-5,
            msg=f"the FC layer computes another function than the conv "
            f"({padding_mode} padding, with bias)",
        )


@pytest.mark.parametrize("name", ["fc+conv", "f-fc+conv", "gconv-c4", "fc+conv+gconv"])
def test_4_4_path_weight_norms(mod, name):
    model = build(name, (1, 8, 8), width=3)
    g = torch.Generator().manual_seed(len(name))
    with torch.no_grad():  # every weight and bias away from its initial value (biases start at 0)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    got = mod.path_weight_norms(model)
    expect = path_norms(model)
    assert len(got) == len(expect), f"expected one dict per block ({len(expect)}), got {len(got)}"
    for b, (g, e) in enumerate(zip(got, expect)):
        assert set(g) == set(e), f"block {b}: expected the paths {sorted(e)}, got {sorted(g)}"
        for k in e:
            assert g[k] == pytest.approx(e[k], rel=1e-5), (
                f"block {b}, path {k!r}: the norm should cover all of the path's weights and biases"
            )
