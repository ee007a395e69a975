"""Unit tests of equilib.nn primitives against dense / loop oracles."""

import math

import pytest
import torch
import torch.nn.functional as F

from equilib import nn as enn

torch.manual_seed(0)


def _dense_oracle(layer, in_shape):
    """The matrix of a linear layer (bias removed) by pushing the identity basis through it."""
    n = math.prod(in_shape)
    eye = torch.eye(n).view(n, *in_shape)
    zero = layer(torch.zeros(1, *in_shape))
    return (layer(eye) - zero).reshape(n, -1).T  # (out, in)


def test_grouped_linear_matches_loop_with_and_without_basis():
    x = torch.randn(5, 3, 7)
    for basis in (None, torch.randn(4, 7)):
        layer = enn.GroupedLinear(3, 7, 2, basis=basis)
        with torch.no_grad():
            layer.bias.normal_()
        W = layer.weight if basis is None else layer.weight @ basis
        expect = torch.stack([x[:, g] @ W[g].T + layer.bias[g] for g in range(3)], dim=1)
        torch.testing.assert_close(layer(x), expect, rtol=1e-5, atol=1e-5)
        assert layer.weight.shape == (3, 2, 7 if basis is None else 4)


def test_grouped_linear_rejects_bad_input():
    layer = enn.GroupedLinear(3, 7, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., G=3, in=7\)"):
        layer(torch.randn(5, 7, 3))
    with pytest.raises(ValueError, match="basis"):
        enn.GroupedLinear(3, 7, 2, basis=torch.randn(4, 6))


def test_image_linear_is_a_dense_map():
    layer = enn.ImageLinear((2, 4, 4), (3, 2, 2))
    x = torch.randn(6, 2, 4, 4)
    W = layer.effective_weight().reshape(12, 32)
    torch.testing.assert_close(layer(x).reshape(6, -1), x.reshape(6, -1) @ W.T + layer.linear.bias)
    with pytest.raises(ValueError, match=r"\(B, 2, 4, 4\)"):
        layer(torch.randn(6, 2, 4, 5))


def test_factored_linear_equals_dense_rank_one_weight():
    layer = enn.FactoredLinear((3, 4, 5), (2, 2, 3))
    with torch.no_grad():
        layer.v.bias.normal_()
    U, V = layer.factors()
    assert U.shape == (2, 3, 20) and V.shape == (2, 3, 6)
    Wfull = torch.einsum("dcy,dcx->dycx", V, U).reshape(12, 60)  # oracle: materialised weight
    x = torch.randn(7, 3, 4, 5)
    expect = x.reshape(7, -1) @ Wfull.T + layer.v.bias.reshape(-1)
    torch.testing.assert_close(layer(x).reshape(7, -1), expect, rtol=1e-5, atol=1e-5)
    n_weights = layer.u.weight.numel() + layer.v.weight.numel()
    assert n_weights == 2 * 3 * (20 + 6)  # C'C(X + Y)


@pytest.mark.parametrize("cls", [enn.FactoredLinear, enn.SparseFactoredLinear])
def test_factored_linear_balance_keeps_the_function_and_balances_norms(cls):
    torch.manual_seed(0)
    layer = cls((3, 4, 4), (2, 2, 2))
    with torch.no_grad():  # unbalance the factors first
        layer.u.weight.mul_(5.0)
    x = torch.rand(5, 3, 4, 4)
    before = layer(x)
    n_before = layer.u.weight.pow(2).sum() + layer.v.weight.pow(2).sum()
    layer.balance_()
    torch.testing.assert_close(layer(x), before)
    nu = layer.u.weight.norm(dim=2)  # (C, C'): the stored weights have equal norms
    torch.testing.assert_close(nu, layer.v.weight.norm(dim=1).T)
    assert layer.u.weight.pow(2).sum() + layer.v.weight.pow(2).sum() < n_before


def test_sparse_factored_linear_dense_oracle_and_count():
    layer = enn.SparseFactoredLinear((2, 6, 6), (3, 4, 4), anchors_in=3, anchors_out=(2, 2))
    with torch.no_grad():
        layer.v.bias.normal_()
    W = _dense_oracle(layer, (2, 6, 6))
    torch.testing.assert_close(W, layer.effective_weight().reshape(48, 72), rtol=1e-4, atol=1e-5)
    assert layer.u.weight.numel() + layer.v.weight.numel() == 3 * 2 * (9 + 4)


def test_conv2d_circular_is_cyclic_correlation():
    conv = enn.conv2d(2, 3, 3)
    x = torch.randn(2, 2, 6, 6)
    # oracle: explicit sum over taps of rolled inputs (cross-correlation on the torus)
    w = conv.weight
    expect = torch.zeros(2, 3, 6, 6)
    for i in range(3):
        for j in range(3):
            shifted = torch.roll(x, shifts=(-(i - 1), -(j - 1)), dims=(-2, -1))
            expect += torch.einsum("dc,bchw->bdhw", w[:, :, i, j], shifted)
    torch.testing.assert_close(conv(x), expect, rtol=1e-5, atol=1e-5)
    assert torch.all(conv.bias == 0)


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_conv2d_rejects_bad_kernel(k):
    with pytest.raises(ValueError, match="kernel_size"):
        enn.conv2d(1, 1, k)


def test_basis_conv_matches_conv_with_effective_filter():
    basis = torch.randn(4, 9)
    layer = enn.BasisConv2d(2, 3, 3, basis)
    ref = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    with torch.no_grad():
        ref.weight.copy_(layer.effective_weight())
        layer.bias.normal_()
        ref.bias.copy_(layer.bias)
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)
    assert layer.kernel_size == (3, 3) and layer.padding == (1, 1) and layer.stride == (1, 1)
    with pytest.raises(ValueError, match=r"\(M, k\*k=9\)"):
        enn.BasisConv2d(2, 3, 3, torch.randn(4, 8))
    with pytest.raises(ValueError, match="at least one"):
        enn.BasisConv2d(2, 3, 3, torch.randn(0, 9))


def test_sparse_conv_with_anchors_on_grid_reproduces_plain_conv():
    layer = enn.SparseConv2d(2, 3, 5)  # anchors on all 5x5 taps
    ref = enn.conv2d(2, 3, 5)
    with torch.no_grad():
        layer.weight.copy_(ref.weight.reshape(3, 2, 25))  # the same filter values at the anchors
    x = torch.randn(4, 2, 8, 8)
    err = (layer(x) - ref(x)).norm() / ref(x).norm()
    assert err < 1e-4


def test_rbf_basis_fewer_anchors_and_errors():
    P = enn.rbf_basis((5, 5), 3)
    assert P.shape == (9, 25)
    # the anchors are grid points (0, 2, 4): interpolation reproduces anchor values there
    idx = [r * 5 + c for r in (0, 2, 4) for c in (0, 2, 4)]
    torch.testing.assert_close(P[:, idx], torch.eye(9), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="between 1 and"):
        enn.rbf_basis((5, 5), 0)
    with pytest.raises(ValueError, match="between 1 and"):
        enn.SparseConv2d(1, 1, 3, anchors=4)


def test_polyphase_components_and_plain_striding():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    comps = enn.polyphase_components(x, 2)
    assert comps.shape == (1, 4, 1, 2, 2)
    torch.testing.assert_close(comps[0, 3, 0], x[0, 0, 1::2, 1::2])
    torch.testing.assert_close(enn.PlainDownsample(2)(x), x[..., ::2, ::2])
    # the largest-norm component of an increasing ramp is the last one
    torch.testing.assert_close(enn.PolyphaseDownsample(2)(x), x[..., 1::2, 1::2])
    with pytest.raises(ValueError, match="not divisible by the stride 2"):
        enn.PolyphaseDownsample(2)(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match="valid"):
        enn.downsample(2, "bogus")


def test_max_pool_striding_commutes_with_shifts_by_the_stride_only():
    torch.manual_seed(0)
    down = enn.downsample(2, "max")
    x = torch.randn(3, 2, 4, 8, 8)  # group feature maps: pooled over the last two axes only
    y = down(x)
    assert y.shape == (3, 2, 4, 4, 4)
    torch.testing.assert_close(y[:, 1, 2], torch.nn.functional.max_pool2d(x[:, 1, 2], 2))
    shift = lambda z, k: torch.roll(z, (k, -k), dims=(-2, -1))  # noqa: E731
    torch.testing.assert_close(down(shift(x, 2)), shift(y, 1))  # exact for multiples of 2
    assert (down(shift(x, 1)) - y).abs().max() > 0.1  # a one-pixel shift regroups the windows
    assert enn.downsample(1, "max")(x) is x
    with pytest.raises(ValueError, match="not divisible by the stride 2"):
        down(torch.randn(1, 1, 5, 4))
    assert set(enn.STRIDINGS) == {"polyphase", "max", "plain"}


def test_lifting_conv_matches_explicit_rotated_filters():
    layer = enn.LiftingConv2d(2, 3, 3)
    x = torch.randn(2, 2, 6, 6)
    y = layer(x)
    assert y.shape == (2, 3, 4, 6, 6)
    w, b = layer.conv.weight, layer.conv.bias
    for g in range(4):
        wg = torch.rot90(w, g, dims=(-2, -1))
        expect = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), wg, b)
        torch.testing.assert_close(y[:, :, g], expect, rtol=1e-5, atol=1e-5)


def test_group_conv_matches_explicit_transformed_filters():
    layer = enn.GroupConv2d(2, 3, 3)
    x = torch.randn(2, 2, 4, 6, 6)
    y = layer(x)
    w = layer.conv.weight.view(3, 2, 4, 3, 3)
    for g in range(4):
        wg = torch.roll(torch.rot90(w, g, dims=(-2, -1)), g, dims=2).reshape(3, 8, 3, 3)
        expect = F.conv2d(
            F.pad(x.reshape(2, 8, 6, 6), (1, 1, 1, 1), mode="circular"), wg, layer.conv.bias
        )
        torch.testing.assert_close(y[:, :, g], expect, rtol=1e-5, atol=1e-5)


def test_cn_layers_with_n4_equal_exact_c4_layers():
    lift, lift4 = enn.LiftingConvCN(2, 3, 3, N=4), enn.LiftingConv2d(2, 3, 3)
    gc, gc4 = enn.GroupConvCN(3, 2, 3, N=4), enn.GroupConv2d(3, 2, 3)
    with torch.no_grad():
        lift4.conv.weight.copy_(lift.weight)
        gc4.conv.weight.copy_(gc.weight)
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(lift(x), lift4(x), rtol=1e-5, atol=1e-5)
    h = lift(x)
    torch.testing.assert_close(gc(h), gc4(h), rtol=1e-5, atol=1e-5)


def test_rotation_interpolation_matrix_quarter_turn_is_rot90():
    w = torch.randn(5, 5, dtype=torch.float64)
    R = enn.rotation_interpolation_matrix(5, math.pi / 2)
    torch.testing.assert_close((R @ w.reshape(-1)).view(5, 5), torch.rot90(w, 1, dims=(0, 1)))
    with pytest.raises(ValueError, match="odd kernel_size"):
        enn.rotation_interpolation_matrix(4, 0.3)


def test_group_layers_reject_bad_input():
    with pytest.raises(ValueError, match="N in"):
        enn.LiftingConv2d(1, 2, 3, N=8)
    with pytest.raises(ValueError, match="odd kernel_size"):
        enn.LiftingConv2d(1, 2, 4)
    with pytest.raises(ValueError, match=r"\(B, 2, 4, H, H\)"):
        enn.GroupConv2d(2, 2, 3)(torch.randn(1, 2, 3, 6, 6))
    with pytest.raises(ValueError, match="square"):
        enn.LiftingConv2d(1, 2, 3)(torch.randn(1, 1, 6, 8))
    with pytest.raises(ValueError, match="'max' or 'mean'"):
        enn.GroupPool("sum")


def test_soft_block_sums_paths_with_averaging_factor():
    fc = enn.make_path("fc", (2, 8, 8), 3, stride=2)
    conv = enn.make_path("conv", (2, 8, 8), 3, stride=2)
    block = enn.SoftBlock({"fc": fc, "conv": conv}, stride=2)
    x = torch.randn(4, 2, 8, 8)
    outs = block.path_outputs(x)
    assert set(outs) == {"fc", "conv"}
    assert outs["fc"].shape == outs["conv"].shape == (4, 3, 4, 4)
    torch.testing.assert_close(outs["fc"], fc(x))
    # the conv path is the full-resolution conv strided by the largest-norm phase
    comps = enn.polyphase_components(conv(x), 2)
    chosen = comps.flatten(2).norm(dim=2).argmax(1)
    torch.testing.assert_close(outs["conv"], comps[torch.arange(4), chosen])
    torch.testing.assert_close(block(x), torch.relu((outs["fc"] + outs["conv"]) / 2))


def test_soft_block_and_make_path_errors():
    with pytest.raises(ValueError, match="valid path names"):
        enn.SoftBlock({"dense": torch.nn.Identity()})
    with pytest.raises(ValueError, match="valid kinds"):
        enn.make_path("mlp", (1, 4, 4), 2)
    with pytest.raises(ValueError, match="not divisible"):
        enn.make_path("fc", (1, 5, 5), 2, stride=2)


@pytest.mark.parametrize("ph,pw", [(1, 1), (2, 1), (0, 3), (4, 4)])
def test_circular_pad_equals_torch_pad_values_and_gradients(ph, pw):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    ours = enn.circular_pad(x, ph, pw)
    ref = torch.nn.functional.pad(x, (pw, pw, ph, ph), mode="circular")
    assert torch.equal(ours, ref)
    w = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("ph,pw", [(1, 1), (2, 0), (3, 4)])
def test_circular_pad_second_derivatives_and_torch_func(ph, pw):
    # the folding backward is a custom autograd function: check it under gradgradcheck and
    # under torch.func transforms (vmap of its backward, jacrev) against F.pad
    torch.manual_seed(1)
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: enn.circular_pad(t, ph, pw), (x,))
    assert torch.autograd.gradgradcheck(lambda t: enn.circular_pad(t, ph, pw).pow(2), (x,))

    def ref(t):
        return torch.nn.functional.pad(t, (pw, pw, ph, ph), mode="circular").sin().sum()

    def ours(t):
        return enn.circular_pad(t, ph, pw).sin().sum()

    torch.testing.assert_close(torch.func.jacrev(ours)(x), torch.func.jacrev(ref)(x))
    torch.testing.assert_close(torch.func.hessian(ours)(x[0]), torch.func.hessian(ref)(x[0]))
    batched = torch.func.vmap(torch.func.grad(ours))(x)
    torch.testing.assert_close(batched, torch.func.vmap(torch.func.grad(ref))(x))


def test_circular_pad_rejects_padding_larger_than_input():
    with pytest.raises(ValueError, match="larger than the input"):
        enn.circular_pad(torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="non-negative"):
        enn.circular_pad(torch.zeros(1, 1, 2, 2), -1)


def test_circular_conv2d_is_an_nn_conv2d_with_torch_outputs():
    torch.manual_seed(0)
    conv = enn.conv2d(3, 4, 5)
    assert isinstance(conv, torch.nn.Conv2d) and isinstance(conv, enn.CircularConv2d)
    ref = torch.nn.Conv2d(3, 4, 5, padding=2, padding_mode="circular")
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 7, 6)
    torch.testing.assert_close(conv(x), ref(x))


@pytest.mark.parametrize("shape", [(3, 4, 8, 6), (2, 3, 4, 6, 6)])
@pytest.mark.parametrize("stride", [2, 3])
def test_polyphase_downsample_picks_the_largest_component(shape, stride):
    torch.manual_seed(1)
    x = torch.randn(*shape[:-2], 6, 6, requires_grad=True)
    down = enn.PolyphaseDownsample(stride)
    comps = enn.polyphase_components(x, stride)  # (B, s*s, ..., H/s, W/s)
    best = comps.detach().flatten(2).pow(2).sum(2).argmax(1)
    assert torch.equal(down.choose_phase(x), best)
    expected = comps[torch.arange(x.shape[0]), best]
    out = down(x)
    assert torch.equal(out, expected)
    w = torch.randn_like(out)
    (g_ours,) = torch.autograd.grad((out * w).sum(), x)
    (g_ref,) = torch.autograd.grad((expected * w).sum(), x)
    torch.testing.assert_close(g_ours, g_ref)
    # a given phase is used as is, and a wrongly shaped one is refused
    fixed = torch.zeros(x.shape[0], dtype=torch.long)
    assert torch.equal(down(x, phase=fixed), x[..., ::stride, ::stride])
    with pytest.raises(ValueError, match="phase must have shape"):
        down(x, phase=fixed[:1])


@pytest.mark.parametrize("stride", [2, 3])
def test_max_pool_without_gradients_gives_max_pool2d_values(stride):
    torch.manual_seed(stride)
    x = torch.randn(2, 3, 4, 6 * stride, 3 * stride)
    x[..., :stride, :] = 0.25  # tied windows, as a blank region of a canvas gives
    x[0, 0, 0, 0, 0] = float("nan")
    x[1, 2, 3, -1, -1] = float("inf")
    x[1, 1, 1, 0, 1] = -float("inf")
    down = enn.downsample(stride, "max")
    with torch.no_grad():
        fast = down(x)
    H, W = x.shape[-2:]
    ref = torch.nn.functional.max_pool2d(x.reshape(-1, 1, H, W), stride).reshape(fast.shape)
    assert torch.equal(fast.isnan(), ref.isnan()) and fast.isnan().sum() == 1
    assert torch.equal(fast.nan_to_num(), ref.nan_to_num())
    assert torch.equal(down(x.requires_grad_()).detach().nan_to_num(), ref.nan_to_num())
    with pytest.raises(ValueError, match="multiples of the stride"):
        enn.window_maxima(torch.randn(1, 5, 4), 2)
    with pytest.raises(ValueError, match="positive int"):
        enn.window_maxima(x, 0)


def test_max_pool_forward_mode_derivative_follows_max_pool2d_without_gradients_too():
    x = torch.zeros(1, 1, 4, 4)  # every window tied: max_pool2d's tangent is its first entry's
    t = torch.arange(16.0).reshape(1, 1, 4, 4)
    ref = torch.func.jvp(lambda z: torch.nn.functional.max_pool2d(z, 2), (x,), (t,))[1]
    with torch.no_grad():
        got = torch.func.jvp(enn.downsample(2, "max"), (x,), (t,))[1]
    assert torch.equal(got, ref)


def test_max_pool_gradient_goes_to_one_entry_of_a_tied_window():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)  # every window tied
    enn.downsample(2, "max")(x).sum().backward()
    assert x.grad.sum() == 4 and x.grad.max() == 1  # one entry per window, as max_pool2d


@pytest.mark.parametrize(
    "make",
    [
        lambda k: enn.conv2d(1, 2, k),
        lambda k: enn.BasisConv2d(1, 2, k, torch.randn(3, k * k)),
        lambda k: enn.SparseConv2d(1, 1, k, anchors=2),
    ],
)
def test_an_even_kernel_which_would_change_the_image_size_is_refused(make):
    assert make(3)(torch.randn(2, 1, 8, 8)).shape[-2:] == (8, 8)
    for k in (2, 4):
        with pytest.raises(ValueError, match="kernel_size must be odd"):
            make(k)
