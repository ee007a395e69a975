"""Exact linear-model evidence (equilib.laplace.linear) against closed forms and Laplace."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from equilib.laplace import FullLaplace
from equilib.laplace.linear import (
    blr_posterior,
    circulant_design,
    evidence_terms,
    linear_model_evidence,
    log_evidence,
    polynomial_features,
)

DT = torch.float64


def marginal_gaussian(Phi, y, delta, sigma):
    N = len(y)
    cov = sigma**2 * torch.eye(N, dtype=DT) + Phi @ Phi.T / delta
    return torch.distributions.MultivariateNormal(torch.zeros(N, dtype=DT), cov).log_prob(y)


def test_log_evidence_equals_marginal_gaussian():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(25, generator=g, dtype=DT) * 2 - 1
    y = torch.sin(3 * x) + 0.1 * torch.randn(25, generator=g, dtype=DT)
    for degree in (0, 2, 5):
        Phi = polynomial_features(x, degree)
        for delta, sigma in ((0.5, 0.1), (3.0, 0.4)):
            ev = log_evidence(Phi, y, delta, sigma)
            assert abs(ev - marginal_gaussian(Phi, y, delta, sigma)) < 1e-9
            t = evidence_terms(Phi, y, delta, sigma)
            assert abs(t["data_fit"] + t["occam"] - ev) < 1e-12
            assert t["occam"] < 0 and 0 < t["effective_dimensions"] <= degree + 1


def test_evidence_matches_full_laplace_of_a_linear_layer():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 3, generator=g, dtype=DT)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=DT) + 0.2 * torch.randn(30, generator=g, dtype=DT)
    m, _ = blr_posterior(X, y, 2.0, 0.3)
    layer = nn.Linear(3, 1, bias=False).to(DT)
    with torch.no_grad():
        layer.weight.copy_(m.unsqueeze(0))
    la = FullLaplace(layer, "regression", prior_precision=2.0, sigma_noise=0.3)
    la.fit([(X, y.unsqueeze(1))])
    assert abs(la.log_marginal_likelihood() - log_evidence(X, y, 2.0, 0.3)) < 1e-9


def test_evidence_gradient_in_log_prior_precision():
    g = torch.Generator().manual_seed(2)
    Phi = torch.randn(20, 4, generator=g, dtype=DT)
    y = torch.randn(20, generator=g, dtype=DT)
    ld = torch.tensor(0.3, dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(log_evidence(Phi, y, ld.exp(), 0.5), ld)
    eps = 1e-6
    fd = (
        log_evidence(Phi, y, math.exp(0.3 + eps), 0.5)
        - log_evidence(Phi, y, math.exp(0.3 - eps), 0.5)
    ) / (2 * eps)
    assert abs(fd - grad) < 1e-6


def test_circulant_design_is_circular_convolution():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(4, 6, generator=g, dtype=DT)
    w = torch.randn(6, generator=g, dtype=DT)
    Y = (circulant_design(X) @ w).reshape(4, 6)
    expected = torch.stack([sum(w[j] * torch.roll(X[k], j) for j in range(6)) for k in range(4)])
    torch.testing.assert_close(Y, expected)
    # equivariance: shifting the input shifts the output
    Ys = (circulant_design(torch.roll(X, 2, dims=1)) @ w).reshape(4, 6)
    torch.testing.assert_close(Ys, torch.roll(Y, 2, dims=1))


def test_symmetric_data_prefer_the_equivariant_model():
    g = torch.Generator().manual_seed(4)
    n, N, sigma = 8, 40, 0.3
    X = torch.randn(N, n, generator=g, dtype=DT)
    w = torch.randn(n, generator=g, dtype=DT)
    W = torch.randn(n, n, generator=g, dtype=DT)
    noise = sigma * torch.randn(N, n, generator=g, dtype=DT)
    Y_sym = (circulant_design(X) @ w).reshape(N, n) + noise
    Y_free = X @ W.T + noise
    ev = {
        (d, m): linear_model_evidence(X, Y, m, 1.0, sigma)
        for d, Y in (("sym", Y_sym), ("free", Y_free))
        for m in ("fc", "conv")
    }
    assert ev["sym", "conv"]["log_evidence"] > ev["sym", "fc"]["log_evidence"]
    assert ev["free", "fc"]["log_evidence"] > ev["free", "conv"]["log_evidence"]
    # the unconstrained model always fits at least as well: the Occam factor decides
    assert ev["sym", "fc"]["data_fit"] > ev["sym", "conv"]["data_fit"]
    # fc terms are sums of one evidence per output coordinate
    one = evidence_terms(X, Y_free[:, 0], 1.0, sigma)["log_evidence"]
    rest = sum(evidence_terms(X, Y_free[:, i], 1.0, sigma)["log_evidence"] for i in range(1, n))
    assert abs(one + rest - ev["free", "fc"]["log_evidence"]) < 1e-9


def test_bad_input():
    with pytest.raises(ValueError, match="degree"):
        polynomial_features(torch.zeros(3), -1)
    with pytest.raises(ValueError, match="positive"):
        log_evidence(torch.zeros(3, 2), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="Phi"):
        log_evidence(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="'fc' or 'conv'"):
        linear_model_evidence(torch.zeros(3, 2), torch.zeros(3, 2), "gconv")


def test_figure_data_and_drawing():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from equilib.laplace import KronLaplace
    from equilib.viz import marglik as vm
    from equilib.widgets.marglik import evidence_explorer_state

    g = torch.Generator().manual_seed(5)
    x = torch.rand(20, generator=g, dtype=DT) * 2 - 1
    y = 1 - x + x**2 + 0.1 * torch.randn(20, generator=g, dtype=DT)
    scan = vm.degree_scan(x, y, range(5), 1.0, 0.1)
    assert int(scan["degree"][scan["log_evidence"].argmax()]) == 2
    assert abs(scan["data_fit"][2] + scan["occam"][2] - scan["log_evidence"][2]) < 1e-9
    pscan = vm.precision_scan(polynomial_features(x, 2), y, [-1.0, 0.0, 1.0], 0.1)
    assert (
        abs(pscan["log_evidence"][1] - float(log_evidence(polynomial_features(x, 2), y, 1.0, 0.1)))
        < 1e-9
    )
    # a generator of grid points gives the same scan as a list; an empty grid is refused
    again = vm.precision_scan(polynomial_features(x, 2), y, (v for v in [-1.0, 0.0, 1.0]), 0.1)
    assert again["log_delta"].shape == again["log_evidence"].shape == (3,)
    np.testing.assert_allclose(again["log_evidence"], pscan["log_evidence"])
    assert len(vm.degree_scan(x, y, (d for d in range(3)))["log_evidence"]) == 3
    with pytest.raises(ValueError, match="at least one polynomial degree"):
        vm.degree_scan(x, y, [])
    with pytest.raises(ValueError, match="at least one log prior precision"):
        vm.precision_scan(polynomial_features(x, 2), y, [], 0.1)
    X = torch.randn(16, 4, generator=g, dtype=DT)
    curves = vm.evidence_vs_n(X, X.roll(1, dims=1), [4, 16], 1.0, 0.3)
    assert curves["conv"][-1] > curves["fc"][-1]  # a shift is a convolution
    for ns in ([4, 32], [0, 4], []):  # more examples than given, none, or no n at all
        with pytest.raises(ValueError, match="ns must be numbers of examples between 1 and the 16"):
            vm.evidence_vs_n(X, X.roll(1, dims=1), ns, 1.0, 0.3)
    state = evidence_explorer_state(x, y, 2, 0.0, 0.1)
    assert abs(state["log_evidence"] - scan["log_evidence"][2]) < 1e-9
    assert state["mean"].shape == state["std"].shape == (200,)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    la = KronLaplace(net).fit([(torch.randn(8, 3, dtype=DT), torch.randint(0, 2, (8,)))])
    table = vm.layer_table(la)
    assert table["name"] == la.param_names and len(table["effective_dimensions"]) == 4
    vm.plot_degree_scan(scan)
    vm.plot_evidence_vs_n(curves, "shift")
    vm.plot_layer_table(table)
    vm.plot_kron_vs_dense(la.ggn_block("0.weight"), la.ggn_block("0.weight"))
    vm.plot_fits(x, y, {"mean": (state["grid"], state["mean"])})
    plt.close("all")
