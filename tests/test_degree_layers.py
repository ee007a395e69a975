"""Partial lifting and group convolutions: exact equivariance at uniform lambda, free at identity."""

import math

import pytest
import torch
import torch.nn.functional as F

from equilib.degree import GroupDensity, PartialGroupConv, PartialLiftingConv
from equilib.groups import Dihedral, Rotations, equivariance_error


def _peaked_weights(order: int, beta: float) -> torch.Tensor:
    """w(k) proportional to exp(beta cos(2 pi k / N)): uniform at beta=0, the identity as beta grows."""
    z = beta * torch.cos(2 * math.pi * torch.arange(order) / order)
    return torch.softmax(z, 0)


def _dense_c4_average_lifting(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Oracle: sum_h w_h rot90^h(K[:, (g - h) mod 4]) written with explicit loops."""
    out = torch.zeros_like(K)
    for h in range(4):
        for g in range(4):
            out[:, g] += w[h] * torch.rot90(K[:, (g - h) % 4], h, dims=(-2, -1))
    return out


def _dense_c4_average_group(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(K)
    for h in range(4):
        for g in range(4):
            for gp in range(4):
                out[:, g, :, gp] += w[h] * torch.rot90(
                    K[:, (g - h) % 4, :, (gp - h) % 4], h, dims=(-2, -1)
                )
    return out


def test_effective_weight_matches_explicit_average():
    torch.manual_seed(0)
    lift, gc = PartialLiftingConv(2, 3, 5, "C4"), PartialGroupConv(3, 2, 3, "C4")
    w = torch.tensor([0.1, 0.5, 0.3, 0.1])
    assert torch.allclose(
        lift.effective_weight(w), _dense_c4_average_lifting(lift.weight.detach(), w), atol=1e-6
    )
    assert torch.allclose(
        gc.effective_weight(w), _dense_c4_average_group(gc.weight.detach(), w), atol=1e-6
    )


@pytest.mark.parametrize("group", [Rotations(4), Dihedral(4)])
def test_uniform_lambda_is_exactly_equivariant(group):
    torch.manual_seed(1)
    lift = PartialLiftingConv(1, 4, 5, group)
    gc = PartialGroupConv(4, 3, 3, group)
    x = torch.randn(3, 1, 12, 12)
    assert lift.equivariance_error(x) < 1e-5
    assert gc.equivariance_error(torch.randn(2, 4, group.order, 12, 12)) < 1e-5
    net = lambda x: gc(torch.relu(lift(x)))
    assert equivariance_error(net, group, x, out_action="fmap") < 1e-5


def test_identity_lambda_gives_the_unconstrained_layer():
    torch.manual_seed(2)
    lift, gc = PartialLiftingConv(2, 3, 5, "C4"), PartialGroupConv(3, 2, 3, "C4")
    e = torch.tensor([1.0, 0, 0, 0])
    x = torch.randn(2, 2, 10, 10)
    # oracle: a plain circular conv with the raw kernel
    W = lift.weight.detach().reshape(12, 2, 5, 5)
    ref = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="circular"), W).unflatten(1, (3, 4))
    assert torch.allclose(lift(x, weights=e), ref, atol=1e-5)
    h = torch.randn(2, 3, 4, 10, 10)
    W2 = gc.weight.detach().reshape(8, 12, 3, 3)
    ref2 = F.conv2d(F.pad(h.flatten(1, 2), (1, 1, 1, 1), mode="circular"), W2).unflatten(1, (2, 4))
    assert torch.allclose(gc(h, weights=e), ref2, atol=1e-5)
    # and it is far from equivariant
    assert (
        equivariance_error(lambda x: lift(x, weights=e), Rotations(4), x, out_action="fmap") > 0.1
    )


def test_equivariance_error_grows_as_lambda_concentrates():
    torch.manual_seed(3)
    lift = PartialLiftingConv(1, 4, 5, "C4")
    gc = PartialGroupConv(4, 4, 3, "C4")
    x = torch.randn(4, 1, 12, 12)
    errors = []
    for beta in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        w = _peaked_weights(4, beta)
        net = lambda x, w=w: gc(torch.relu(lift(x, weights=w)), weights=w)
        errors.append(equivariance_error(net, Rotations(4), x, out_action="fmap"))
    assert errors[0] < 1e-5
    assert all(b > a for a, b in zip(errors, errors[1:])), errors


def test_density_receives_gradients_and_can_be_shared():
    d = GroupDensity.cyclic(4, 2)
    with torch.no_grad():
        d.coefficients[0, 1] = 0.5
    lift = PartialLiftingConv(1, 2, 3, "C4", density=d)
    gc = PartialGroupConv(2, 2, 3, "C4", density=d)
    assert lift.density is gc.density
    out = gc(lift(torch.randn(2, 1, 8, 8))).square().sum()
    out.backward()
    assert d.coefficients.grad is not None and d.coefficients.grad.abs().sum() > 0


def test_bad_input():
    lift = PartialLiftingConv(1, 2, 3, "C4")
    with pytest.raises(ValueError, match="non-negative"):
        lift(torch.randn(1, 1, 8, 8), weights=torch.tensor([1.0, -0.5, 0.2, 0.3]))
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        lift(torch.randn(1, 1, 8, 8), weights=torch.ones(3))
    with pytest.raises(ValueError, match="\\(B, 1, H, W\\)"):
        lift(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="\\(B, 2, 4, H, W\\)"):
        PartialGroupConv(2, 2, 3, "C4")(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="has 8 grid elements"):
        PartialLiftingConv(1, 2, 3, "C4", density=GroupDensity.cyclic(8, 4))
    with pytest.raises(ValueError, match="unknown group"):
        PartialLiftingConv(1, 2, 3, "Q4")
    with pytest.raises(ValueError, match="odd"):
        PartialLiftingConv(1, 2, 4, "C4")
