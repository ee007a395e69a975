"""Layers as matrices (equilib.viz.connectivity) and the explorers built on them."""

import matplotlib
import pytest
import torch

from equilib import nn as enn
from equilib.groups import CyclicShifts, Rotations
from equilib.models import build
from equilib.viz import connectivity as vc

matplotlib.use("Agg")
torch.manual_seed(0)


def test_layer_matrix_of_conv_equals_explicit_banded_matrix():
    conv = enn.conv2d(2, 3, 3)
    with torch.no_grad():
        conv.bias.normal_()  # the bias must drop out
    M = vc.layer_matrix(conv, (2, 5, 6))
    assert M.shape == (3 * 30, 2 * 30)
    # independent oracle: loop over output pixels and taps
    w = conv.weight.detach()
    oracle = torch.zeros(3, 5, 6, 2, 5, 6)
    for y in range(5):
        for x in range(6):
            for i in range(3):
                for j in range(3):
                    oracle[:, y, x, :, (y + i - 1) % 5, (x + j - 1) % 6] += w[:, :, i, j]
    torch.testing.assert_close(M, oracle.reshape(90, 60))
    torch.testing.assert_close(vc.circular_conv_matrix(w, 5, 6), M)


def test_unit_weights_slide_for_conv_and_not_for_fc():
    conv = enn.conv2d(1, 1, 3)
    M = vc.layer_matrix(conv, (1, 6, 6))
    a = vc.unit_weights(M, (1, 6, 6), 0 * 6 + 0)
    b = vc.unit_weights(M, (1, 6, 6), 2 * 6 + 3)
    torch.testing.assert_close(torch.roll(a, (2, 3), dims=(-2, -1)), b)
    assert (b != 0).sum() == 9  # a local 3x3 patch
    fc = enn.ImageLinear((1, 6, 6), (1, 6, 6))
    Mf = vc.layer_matrix(fc, (1, 6, 6))
    a, b = vc.unit_weights(Mf, (1, 6, 6), 0), vc.unit_weights(Mf, (1, 6, 6), 15)
    assert (torch.roll(a, (2, 3), dims=(-2, -1)) - b).norm() > 0.5 * b.norm()
    with pytest.raises(ValueError, match="unit must be in"):
        vc.unit_weights(M, (1, 6, 6), 36)


def test_weight_sharing_error_zero_for_conv_large_for_fc():
    shape = (2, 6, 6)
    conv = enn.conv2d(2, 3, 3)
    assert vc.weight_sharing_error(vc.layer_matrix(conv, shape), shape, 3) < 1e-5
    fc = enn.ImageLinear(shape, (3, 6, 6))
    assert vc.weight_sharing_error(vc.layer_matrix(fc, shape), shape, 3) > 0.9
    # the projection recovers the conv's filter (zero outside the 3x3 taps)
    theta = vc.nearest_circular_conv(vc.layer_matrix(conv, shape), shape, 3)
    torch.testing.assert_close(theta[:, :, 0, 0], conv.weight.detach()[:, :, 1, 1])
    torch.testing.assert_close(theta[:, :, 5, 5], conv.weight.detach()[:, :, 0, 0])
    assert theta[:, :, 3, 3].abs().max() == 0


def test_feature_map_response_errors():
    x = torch.randn(1, 1, 16, 16)
    conv = build("conv", (1, 16, 16), width=4)
    resp = vc.feature_map_response(conv, x, CyclicShifts(16, 16), (3, 5))
    assert len(resp["errors"]) == 3 and max(resp["errors"]) < 1e-5
    # what the explorer draws as g.f(x) is the f(g.x) the error measures, after the strided
    # blocks too (a shift by 3 or 5 pixels is not 3 // 2 or 5 // 2 output pixels there)
    for f_gx, g_fx, err in zip(resp["f_gx"], resp["g_fx"], resp["errors"]):
        assert float((f_gx - g_fx).norm() / g_fx.norm()) == pytest.approx(err, abs=1e-6)
    fc = build("fc", (1, 16, 16), width=4)
    assert max(vc.feature_map_response(fc, x, CyclicShifts(16, 16), (3, 5))["errors"]) > 1e-3
    g = build("gconv-c4", (1, 16, 16), width=4)
    resp = vc.feature_map_response(g, x, Rotations(4), 1, fmap=True)
    assert max(resp["errors"]) < 1e-5


def test_explorers_build_and_draw():
    from equilib.widgets import connectivity as wc

    box = wc.connectivity_explorer(
        {
            "conv": (enn.conv2d(1, 2, 3), (1, 6, 6)),
            "fc": (enn.ImageLinear((1, 6, 6), (2, 3, 3)), (1, 6, 6)),
        }
    )
    assert box.children
    box2 = wc.feature_map_explorer(
        {"conv": build("conv", (1, 16, 16), width=4)}, torch.randn(2, 1, 16, 16)
    )
    assert box2.children
    with pytest.raises(ValueError, match="at least one"):
        wc.connectivity_explorer({})
