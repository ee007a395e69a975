"""Grading tests of exercises/ex09_measuring.py: compared against equilib.measure and oracles."""

from __future__ import annotations

import torch
from torch import nn

from equilib import measure
from equilib.groups import Rotations, equivariance_error, rotate

NAME = "ex09_measuring"


def _net(seed=0, H=12):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * H * H, 4)
    ).double()


def _x(B=3, H=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(B, 1, H, H, dtype=torch.float64)
    x[..., 3:-3, 3:-3] = torch.rand(B, 1, H - 6, H - 6, generator=g, dtype=torch.float64)
    return x


def test_9_1_finite_differences_match_jvp(mod):
    f, x = _net(), _x()
    got = mod.rotation_lie_derivative_fd(f, x, eps=1e-5)
    ref = measure.lie_derivative(f, x, "rotation")
    assert got.shape == ref.shape, (
        f"expected the shape of f(x), {tuple(ref.shape)}, got {tuple(got.shape)}"
    )
    gap = float((got - ref).norm() / ref.norm())
    assert gap < 1e-3, (
        f"the finite difference is {gap:.1e} (relative) away from the derivative by jvp"
    )
    coarse = mod.rotation_lie_derivative_fd(f, x, eps=1e-2)
    gap = float((coarse - ref).norm() / ref.norm())
    assert gap < 0.1, (
        f"at eps = 1e-2 the finite difference is {gap:.2f} (relative) away from the derivative by "
        "jvp: a one-sided difference is not accurate enough, use both sides of t = 0"
    )


def test_9_1_an_invariant_function_has_zero_derivative(mod):
    x = _x()
    d = mod.rotation_lie_derivative_fd(lambda z: z.flatten(1).norm(dim=1, keepdim=True) * 0 + 1, x)
    assert float(d.abs().max()) == 0.0, "a function that ignores its input has a zero derivative"


def test_9_2_generator_matches_forward_mode(mod):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    t0 = torch.zeros((), dtype=torch.float64)
    _, d = torch.func.jvp(lambda t: measure.translate(x, 0.0, t), (t0,), (torch.ones_like(t0),))
    torch.testing.assert_close(
        mod.shift_generator(x),
        d,
        msg="the generator differs from the derivative of translate at t = 0",
    )


def test_9_2_circular_conv_commutes_with_the_generator(mod):
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular", bias=False).double()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(
        conv(mod.shift_generator(x)),
        mod.shift_generator(conv(x)),
        msg="a circular convolution should commute with the shift generator",
    )


def test_9_3_augerino_rotate(mod):
    x = _x(B=4)
    eps = torch.tensor([-0.5, -0.1, 0.2, 0.45], dtype=torch.float64)
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    out = mod.augerino_rotate(x, w, eps)
    torch.testing.assert_close(
        out,
        rotate(x, 1.3 * eps, mode="cubic").detach() + 0 * out.detach(),
        atol=1e-10,
        rtol=0,
        msg="expected image b turned by width * eps[b] radians with "
        'equilib.groups.rotate(..., mode="cubic")',
    )
    out.pow(2).sum().backward()
    assert w.grad is not None and float(w.grad.abs()) > 0, (
        "no gradient reached the width: the angles must stay a differentiable function of it"
    )
    # the gradient matches a finite difference in the width
    with torch.no_grad():
        h = 1e-6
        up = mod.augerino_rotate(x, w + h, eps).pow(2).sum()
        down = mod.augerino_rotate(x, w - h, eps).pow(2).sum()
    assert abs(float(w.grad) - float((up - down) / (2 * h))) < 1e-5 * max(1, abs(float(w.grad))), (
        "the gradient in the width disagrees with a finite difference"
    )


def test_9_4_c4_average_is_invariant_but_not_to_small_turns(mod):
    net, x = _net(seed=2), _x(seed=3)
    f = lambda z: mod.c4_average(net, z)
    assert equivariance_error(f, Rotations(4), x, out_action="invariant") < 1e-12, (
        "the averaged output changes under a quarter turn of the input"
    )
    ref = sum(net(torch.rot90(x, k, dims=(-2, -1))) for k in range(4)) / 4
    torch.testing.assert_close(f(x), ref, msg="expected the mean of f over the C4 orbit of x")
    assert measure.lie_derivative_norm(f, x, "rotation") > 1e-4
