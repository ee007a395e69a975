"""Grading tests of exercises/ex02_convolution.py: compared against equilib and oracles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from equilib import nn as enn
from equilib.groups import CyclicShifts, equivariance_error
from equilib.viz.connectivity import circular_conv_matrix, layer_matrix

NAME = "ex02_convolution"
# what the exercises ask you to write, which chapter 02 calls from the library
FORBIDDEN = [
    ("2.1", circular_conv_matrix),
    ("2.1", layer_matrix),
    ("2.3", enn.PolyphaseDownsample),
    ("2.4", equivariance_error),
]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- Exercise 2.1


@pytest.mark.parametrize(
    # the last two: the filter is larger than the image, so taps wrap onto the same pixel
    "shape",
    [(2, 1, 3, 5, 5), (3, 2, 3, 4, 6), (1, 2, 5, 7, 7), (2, 1, 3, 2, 2), (1, 2, 5, 3, 4)],
)
def test_2_1_conv_matrix_matches_the_layer(mod, shape):
    Co, C, k, H, W = shape
    conv = enn.conv2d(C, Co, k)
    M = mod.conv_matrix(conv.weight.detach(), H, W)
    assert tuple(M.shape) == (Co * H * W, C * H * W), f"expected (C'HW, CHW), got {tuple(M.shape)}"
    x = _rand(1, C, H, W, seed=5)
    y = conv(x).detach()
    torch.testing.assert_close(
        (M @ x.flatten()).view(1, Co, H, W),
        y,
        rtol=1e-4,
        atol=1e-5,
        msg="M @ x.flatten() is not the circular convolution of x",
    )
    torch.testing.assert_close(
        M,
        layer_matrix(conv, (C, H, W)),
        rtol=1e-5,
        atol=1e-6,
        msg="the matrix does not match the layer's FC matrix in chapter 02",
    )


def test_2_1_conv_matrix_is_banded_and_shared(mod):
    M = mod.conv_matrix(_rand(1, 1, 3, 3), 6, 6)
    assert int((M != 0).sum(dim=1).max()) == 9, "each output of a 3x3 conv reads 9 inputs"
    row0 = M[0].view(6, 6)
    row = M[2 * 6 + 3].view(6, 6)
    torch.testing.assert_close(
        torch.roll(row0, (2, 3), dims=(0, 1)),
        row,
        msg="rows of a convolution's matrix are shifted copies of each other",
    )


# --------------------------------------------------------------------------- Exercise 2.2


@pytest.mark.parametrize("p", [0, 1, 2, 4])
def test_2_2_circular_pad_matches_F_pad(mod, p):
    x = _rand(2, 3, 4, 5)
    expect = x if p == 0 else F.pad(x, (p, p, p, p), mode="circular")
    torch.testing.assert_close(
        mod.circular_pad(x, p),
        expect,
        msg=f"padding by p={p} should wrap the image around as a torus",
    )


# --------------------------------------------------------------------------- Exercise 2.3


@pytest.mark.parametrize("s", [2, 3])
def test_2_3_polyphase_matches_equilib(mod, s):
    x = _rand(5, 3, 4 * s, 4 * s)
    torch.testing.assert_close(
        mod.polyphase_downsample(x, s),
        enn.PolyphaseDownsample(s)(x),
        msg="not the component chapter 02's shift-equivariant striding picks",
    )


def test_2_3_polyphase_is_shift_equivariant_up_to_output_shift(mod):
    x = _rand(3, 2, 8, 8, seed=1)
    y = mod.polyphase_downsample(x, 2)
    for t in [(1, 0), (0, 1), (3, 5)]:
        ys = mod.polyphase_downsample(torch.roll(x, t, dims=(-2, -1)), 2)
        for b in range(3):
            best = min(
                float((ys[b] - torch.roll(y[b], (i, j), dims=(-2, -1))).norm())
                for i in range(4)
                for j in range(4)
            )
            assert best < 1e-5 * float(y[b].norm()), (
                f"shift {t}, example {b}: the output of the shifted input is no shift of the output"
            )


def test_2_3_polyphase_chooses_per_example_over_all_channels(mod):
    x = torch.zeros(2, 2, 4, 4)
    x[0, 1, 1, 1] = 5.0  # example 0: component (1, 1), found in channel 1
    x[1, 0, 0, 1] = 3.0  # example 1: component (0, 1)
    y = mod.polyphase_downsample(x, 2)
    assert y[0, 1, 0, 0] == 5.0 and y[1, 0, 0, 0] == 3.0, (
        "each example picks its own component, judged over all of its channels together"
    )


# --------------------------------------------------------------------------- Exercise 2.4


def test_2_4_shift_error_matches_equilib(mod):
    x = _rand(3, 1, 8, 8, seed=2)
    shifts = [(1, 0), (0, 3), (5, 2)]
    for pm in ("circular", "zeros"):
        conv = enn.conv2d(1, 2, 3, padding_mode=pm)
        expect = equivariance_error(conv, CyclicShifts(8, 8), x, elements=shifts)
        assert mod.shift_equivariance_error(conv, x, shifts) == pytest.approx(
            expect, rel=1e-4, abs=1e-7
        ), f"{pm} padding: not the largest relative error |f(shift x) - shift f(x)| / |f(x)|"
    assert mod.shift_equivariance_error(enn.conv2d(1, 2, 3), x, shifts) < 1e-5, (
        "a circular convolution is shift-equivariant: its error should be about zero"
    )
    assert mod.shift_equivariance_error(lambda z: z.flip(-1), x, shifts) > 0.1, (
        "a mirror does not commute with shifts: its error should be large"
    )


# --------------------------------------------------------------------------- Exercise 2.5


def _stack(k, layers, padding_mode, seed):
    torch.manual_seed(seed)
    mods = []
    for i in range(layers):
        conv = torch.nn.Conv2d(
            1 if i == 0 else 2, 2, k, padding=k // 2, padding_mode=padding_mode
        ).double()
        with torch.no_grad():
            conv.bias.normal_()
        mods += [conv, torch.nn.Tanh()]
    return torch.nn.Sequential(*mods)


@pytest.mark.parametrize(
    "H, W, k, layers", [(9, 11, 3, 1), (9, 11, 3, 2), (12, 10, 5, 2), (7, 7, 3, 4), (6, 6, 1, 3)]
)
def test_2_5_zero_padding_footprint_matches_an_experiment(mod, H, W, k, layers):
    zero, circ = _stack(k, layers, "zeros", 7), _stack(k, layers, "circular", 7)
    x = torch.randn(3, 1, H, W, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with torch.no_grad():
        diff = (zero(x) - circ(x)).abs().sum(dim=(0, 1))
    measured = diff > 1e-12
    got = mod.zero_padding_footprint(H, W, k, layers)
    assert got.dtype == torch.bool and tuple(got.shape) == (H, W), (
        f"expected a bool mask of shape ({H}, {W}), got {got.dtype} {tuple(got.shape)}"
    )
    missed = int((measured & ~got).sum())
    extra = int((got & ~measured).sum())
    assert missed == 0 and extra == 0, (
        f"{layers} layer(s) of {k}x{k} convs on {H}x{W}: your mask misses {missed} positions where "
        f"zero and circular padding differ and marks {extra} where they agree; how far does an "
        "output's receptive field reach after each layer?"
    )
