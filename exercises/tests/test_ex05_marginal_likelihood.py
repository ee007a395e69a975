"""Grading tests of exercises/ex05_marginal_likelihood.py: against equilib.laplace.linear."""

from __future__ import annotations

import math

import torch

from equilib.laplace.linear import (
    circulant_design,
    evidence_terms,
    linear_model_evidence,
    polynomial_features,
)

NAME = "ex05_marginal_likelihood"
DT = torch.float64


def _data(seed=0, N=25, D=4):
    g = torch.Generator().manual_seed(seed)
    Phi = torch.randn(N, D, generator=g, dtype=DT)
    y = Phi @ torch.randn(D, generator=g, dtype=DT) + 0.3 * torch.randn(N, generator=g, dtype=DT)
    return Phi, y


def test_5_1_log_evidence(mod):
    Phi, y = _data()
    for delta, sigma in ((1.0, 0.3), (0.2, 1.5)):
        expected = evidence_terms(Phi, y, delta, sigma)["log_evidence"]
        assert abs(float(mod.log_evidence(Phi, y, delta, sigma)) - float(expected)) < 1e-8
    # differentiable in log delta: compare with finite differences
    ld = torch.tensor(0.4, dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(mod.log_evidence(Phi, y, ld.exp(), 0.3), ld)
    eps = 1e-6
    fd = (float(mod.log_evidence(Phi, y, math.exp(0.4 + eps), 0.3))
          - float(mod.log_evidence(Phi, y, math.exp(0.4 - eps), 0.3))) / (2 * eps)
    assert abs(float(grad) - fd) < 1e-5


def test_5_2_fit_and_occam(mod):
    Phi, y = _data(seed=1)
    fit, occam = mod.fit_and_occam(Phi, y, 0.7, 0.4)
    t = evidence_terms(Phi, y, 0.7, 0.4)
    assert abs(float(fit) - float(t["data_fit"])) < 1e-8
    assert abs(float(occam) - float(t["occam"])) < 1e-8


def test_5_2_best_degree(mod):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(40, generator=g, dtype=DT) * 2 - 1
    for coeffs in ([0.5, -1.0], [0.2, 1.0, -2.0, 0.0, 1.5]):
        y = sum(c * x**k for k, c in enumerate(coeffs)) + 0.05 * torch.randn(40, generator=g,
                                                                               dtype=DT)
        ev = [float(evidence_terms(polynomial_features(x, d), y, 1.0, 0.05)["log_evidence"])
              for d in range(9)]
        assert mod.best_degree(x, y, 8, 1.0, 0.05) == max(range(9), key=ev.__getitem__)


def test_5_3_circulant_design(mod):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(5, 7, generator=g, dtype=DT)
    Phi = mod.circulant_design(X)
    assert tuple(Phi.shape) == (35, 7)
    torch.testing.assert_close(Phi, circulant_design(X))


def test_5_3_conv_minus_fc(mod):
    g = torch.Generator().manual_seed(4)
    X = torch.randn(20, 6, generator=g, dtype=DT)
    W = torch.randn(6, 6, generator=g, dtype=DT)
    Y = X @ W.T + 0.3 * torch.randn(20, 6, generator=g, dtype=DT)
    expected = (linear_model_evidence(X, Y, "conv", 1.0, 0.3)["log_evidence"]
                - linear_model_evidence(X, Y, "fc", 1.0, 0.3)["log_evidence"])
    assert abs(float(mod.conv_minus_fc(X, Y, 1.0, 0.3)) - float(expected)) < 1e-7
