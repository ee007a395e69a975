"""Every conv-like layer pads in its forward pass as the curvature does, for every padding mode
it accepts; unknown modes raise when the layer is built."""

import pytest
import torch
import torch.nn.functional as F
from oracles import DT, dense_ggn
from torch import nn
from torch.func import functional_call, jacrev

from equilib.laplace import DiagLaplace, FullLaplace, KronLaplace, inspect_model
from equilib.laplace.curvature import conv_patches
from equilib.nn import (
    BasisConv2d,
    CircularConv2d,
    GroupConv2d,
    GroupConvCN,
    LiftingConv2d,
    LiftingConvCN,
    RotationPooledConv2d,
    SparseConv2d,
    conv2d,
)
from equilib.nn.conv import PADDING_MODES

MODES = ("zeros", "circular", "reflect", "replicate")
N = 3  # group order of the interpolated C_N layers (not a quarter turn: filters interpolate)


def _basis(seed=0):
    return torch.randn(4, 9, generator=torch.Generator().manual_seed(seed))


# name -> (builder of the layer for a padding mode, input shape of one example)
LAYERS = {
    "nn.Conv2d": (lambda m: nn.Conv2d(1, 2, 3, padding=1, padding_mode=m), (1, 5, 5)),
    "nn.Conv2d-same-even": (
        lambda m: nn.Conv2d(1, 2, (2, 3), padding="same", padding_mode=m),
        (1, 5, 5),
    ),
    "nn.Conv2d-stride2": (
        lambda m: nn.Conv2d(1, 2, 3, stride=2, padding=1, padding_mode=m),
        (1, 6, 6),
    ),
    "CircularConv2d": (lambda m: CircularConv2d(1, 2, 3, padding=1, padding_mode=m), (1, 5, 5)),
    "conv2d": (lambda m: conv2d(1, 2, 3, padding_mode=m), (1, 5, 5)),
    "conv2d-stride2": (lambda m: conv2d(1, 2, 3, stride=2, padding_mode=m), (1, 6, 6)),
    "BasisConv2d": (lambda m: BasisConv2d(1, 2, 3, _basis(), padding_mode=m), (1, 5, 5)),
    "BasisConv2d-stride2": (
        lambda m: BasisConv2d(1, 2, 3, _basis(), stride=2, padding_mode=m),
        (1, 6, 6),
    ),
    "SparseConv2d": (lambda m: SparseConv2d(1, 2, 3, anchors=2, padding_mode=m), (1, 5, 5)),
    "LiftingConv2d": (lambda m: LiftingConv2d(1, 2, 3, N=4, padding_mode=m), (1, 5, 5)),
    "GroupConv2d": (lambda m: GroupConv2d(1, 2, 3, N=4, padding_mode=m), (1, 4, 5, 5)),
    "RotationPooledConv2d": (
        lambda m: RotationPooledConv2d(1, 2, 3, N=4, padding_mode=m),
        (1, 5, 5),
    ),
    "LiftingConvCN": (lambda m: LiftingConvCN(1, 2, 3, N=N, padding_mode=m), (1, 5, 5)),
    "GroupConvCN": (lambda m: GroupConvCN(1, 2, 3, N=N, padding_mode=m), (1, N, 5, 5)),
}
CASES = [(name, mode) for name in LAYERS for mode in MODES]


def tiny_model(name, mode, n=3, seed=0):
    """layer -> flatten -> linear head (3 classes), float64; and n inputs, labels."""
    build, shape = LAYERS[name]
    torch.manual_seed(seed)
    layer = build(mode)
    with torch.no_grad():
        out = layer(torch.zeros(1, *shape))
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(out.numel(), 3)).to(DT)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, *shape, generator=g, dtype=DT)
    return model, X, torch.randint(0, 3, (n,), generator=g)


def input_factor_oracle(model, X, layer_name):
    """The KFAC input factor of a primitive's weight by its definition, A = mean over rows of
    a a^T, with the rows read off autograd: a_r = d y[r, channel 0] / d weight[0] of the
    primitive's own forward pass on its recorded inputs (no padding code of the curvature)."""
    _, layers = inspect_model(model)
    module = next(layer.module for layer in layers if layer.name == layer_name)
    seen = []
    handle = module.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        model(X)
    handle.remove()
    total, rows = 0, 0
    for x in seen:
        J = jacrev(lambda w, x=x: functional_call(module, {"weight": w}, (x,)))(module.weight)
        B, Co = x.shape[0], module.weight.shape[0]
        J = J.reshape(B, Co, -1, Co, module.weight[0].numel())[:, 0, :, 0]  # (B, R, D)
        a = J.reshape(-1, J.shape[-1])
        total = total + a.T @ a
        rows += a.shape[0]
    return total / rows


def _primitive_weight(model):
    """Name of the weight tensor (and of its module) of the layer under test."""
    _, layers = inspect_model(model)
    layer = layers[0]
    return layer.name + ".weight", layer.name


@pytest.mark.parametrize("name,mode", CASES)
def test_curvature_pads_as_the_forward_pass(name, mode):
    model, X, y = tiny_model(name, mode)
    H = dense_ggn(model, X, y, "classification")
    full = FullLaplace(model, "classification").fit([(X[:2], y[:2]), (X[2:], y[2:])])
    torch.testing.assert_close(full.H, H, atol=1e-10, rtol=1e-10)
    diag = DiagLaplace(model, "classification").fit([(X, y)])
    torch.testing.assert_close(diag.H, torch.diagonal(H), atol=1e-10, rtol=1e-10)
    kron = KronLaplace(model, "classification").fit([(X[:1], y[:1]), (X[1:], y[1:])])
    weight, module = _primitive_weight(model)
    A = kron.factors[weight][0]
    assert A.shape[0] == 1
    torch.testing.assert_close(A[0], input_factor_oracle(model, X, module), atol=1e-10, rtol=1e-10)
    # the head's blocks are exact for one example
    one = KronLaplace(model, "classification").fit([(X[:1], y[:1])])
    H1 = dense_ggn(model, X[:1], y[:1], "classification")
    n = model[2].weight.numel() + model[2].bias.numel()
    torch.testing.assert_close(one.ggn_block("2.bias"), H1[-3:, -3:], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(one.ggn_block("2.weight"), H1[-n:-3, -n:-3], atol=1e-10, rtol=1e-10)


def test_the_oracle_sees_a_wrong_padding():
    """The comparison can fail: a curvature padding in another mode than the forward pass."""
    model, X, y = tiny_model("LiftingConvCN", "reflect")
    H = dense_ggn(model, X, y, "classification")
    model[0].padding_mode = "replicate"  # the curvature now pads differently from ...
    forward = model[0].forward
    model[0].forward = lambda x: _reflect_forward(model[0], x)  # ... the forward pass
    try:
        wrong = FullLaplace(model, "classification").fit([(X, y)]).H
    finally:
        model[0].forward = forward
    assert (wrong - H).abs().max() > 1e-3


def _reflect_forward(layer, x):
    p = layer.k // 2
    xp = F.pad(x, (p, p, p, p), mode="reflect")
    y = F.conv2d(xp, layer.effective_weight().flatten(0, 1))
    y = y.view(x.shape[0], layer.N, layer.out_channels, *x.shape[-2:]).transpose(1, 2)
    return y + layer.bias.view(1, -1, 1, 1, 1)


@pytest.mark.parametrize("name", list(LAYERS))
def test_unknown_padding_mode_raises_listing_the_valid_ones(name):
    build, _ = LAYERS[name]
    with pytest.raises(ValueError, match="padding_mode"):
        build("bogus")
    if not name.startswith(("nn.", "CircularConv2d")):  # torch's own message otherwise
        with pytest.raises(ValueError, match="'zeros', 'circular', 'reflect', 'replicate'"):
            build("bogus")


def test_curvature_padding_of_an_unknown_mode_raises():
    x = torch.randn(1, 1, 5, 5)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        conv_patches(x, (3, 3), (1, 1), (1, 1), "bogus")
    model, X, y = tiny_model("LiftingConvCN", "zeros")
    model[0].padding_mode = "bogus"  # changed after the checks of __init__
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        FullLaplace(model, "classification").fit([(X, y)])


def test_padding_modes_are_those_of_conv2d():
    assert PADDING_MODES == MODES
    for mode in MODES:
        nn.Conv2d(1, 1, 3, padding_mode=mode)  # torch accepts every one of them


# ------------------------------------------------------------ partial group convolutions ----
def partial_model(kind, mode, group="C4", n=3, seed=0):
    """partial conv -> flatten -> linear head, float64, a non-uniform frozen density."""
    from equilib.degree.layers import PartialGroupConv, PartialLiftingConv

    torch.manual_seed(seed)
    cls = PartialLiftingConv if kind == "lifting" else PartialGroupConv
    layer = cls(1, 2, 3, group=group, padding_mode=mode)
    with torch.no_grad():
        for p in layer.density.parameters():
            p.normal_()
    layer.density.requires_grad_(False)
    G = layer.group.order
    shape = (1, 5, 5) if kind == "lifting" else (1, G, 5, 5)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(2 * G * 25, 3)).to(DT)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, *shape, generator=g, dtype=DT)
    return model, X, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,group", [("lifting", "C4"), ("group", "C4"), ("lifting", "D4")])
def test_partial_convs_curvature_pads_as_the_forward_pass(kind, group, mode):
    """The degree package's layers: the GGN in their free kernel K (the effective kernel is
    the lambda-average of K's transforms) equals the dense one; no Kronecker factors."""
    model, X, y = partial_model(kind, mode, group)
    H = dense_ggn(model, X, y, "classification")
    full = FullLaplace(model, "classification").fit([(X[:2], y[:2]), (X[2:], y[2:])])
    torch.testing.assert_close(full.H, H, atol=1e-10, rtol=1e-10)
    diag = DiagLaplace(model, "classification").fit([(X, y)])
    torch.testing.assert_close(diag.H, torch.diagonal(H), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="no Kronecker factors"):
        KronLaplace(model, "classification").fit([(X, y)])


def test_partial_convs_need_a_frozen_density():
    model, X, y = partial_model("lifting", "zeros")
    model[0].density.requires_grad_(True)
    with pytest.raises(ValueError, match="GroupDensity"):
        FullLaplace(model, "classification")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["lifting", "group"])
def test_partial_convs_pad_as_conv2d(kind, mode):
    """The degree package's layers pad like ``nn.Conv2d`` in every mode they accept (their
    curvature differentiates the forward pass itself, ``equilib.degree.marglik``)."""
    from equilib.degree.layers import PartialGroupConv, PartialLiftingConv

    torch.manual_seed(0)
    if kind == "lifting":
        layer = PartialLiftingConv(2, 3, 3, group="C4", padding_mode=mode)
        x = torch.randn(2, 2, 6, 6)
    else:
        layer = PartialGroupConv(2, 3, 3, group="C4", padding_mode=mode)
        x = torch.randn(2, 2, 4, 6, 6)
    y = layer(x)
    W = layer.effective_weight().detach()
    G = layer.group.order
    ref = nn.Conv2d(
        W.shape[2] * (G if kind == "group" else 1),
        3 * G,
        3,
        padding=1,
        padding_mode=mode,
        bias=False,
    )
    with torch.no_grad():
        ref.weight.copy_(W.reshape(3 * G, -1, 3, 3))
        expected = ref(x.flatten(1, 2) if kind == "group" else x).unflatten(1, (3, G))
        expected = expected + layer.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        (PartialLiftingConv if kind == "lifting" else PartialGroupConv)(
            2, 3, 3, padding_mode="bogus"
        )
