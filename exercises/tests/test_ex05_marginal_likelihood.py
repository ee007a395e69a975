"""Grading tests of exercises/ex05_marginal_likelihood.py: against equilib.laplace.linear."""

from __future__ import annotations

import math

import pytest
import torch

from equilib.laplace.linear import (
    circulant_design,
    evidence_terms,
    linear_model_evidence,
    log_evidence,
    polynomial_features,
)

NAME = "ex05_marginal_likelihood"
DT = torch.float64
# what the exercises ask you to write, which chapter 05 calls from the library
FORBIDDEN = [
    ("5.1", log_evidence),
    ("5.2", evidence_terms),
    ("5.3", circulant_design),
    ("5.3", linear_model_evidence),
]


def _data(seed=0, N=25, D=4):
    g = torch.Generator().manual_seed(seed)
    Phi = torch.randn(N, D, generator=g, dtype=DT)
    y = Phi @ torch.randn(D, generator=g, dtype=DT) + 0.3 * torch.randn(N, generator=g, dtype=DT)
    return Phi, y


def _gaussian_evidence(Phi, y, delta, sigma):
    """log N(y; 0, sigma^2 I + Phi Phi^T / delta) by torch.distributions (independent of equilib)."""
    cov = sigma**2 * torch.eye(len(y), dtype=DT) + Phi @ Phi.T / delta
    return float(
        torch.distributions.MultivariateNormal(torch.zeros(len(y), dtype=DT), cov).log_prob(y)
    )


def test_5_1_log_evidence(mod):
    Phi, y = _data()
    for delta, sigma in ((1.0, 0.3), (0.2, 1.5)):
        expected = _gaussian_evidence(Phi, y, delta, sigma)
        got = float(mod.log_evidence(Phi, y, delta, sigma))
        assert abs(got - expected) < 1e-8, (
            f"delta={delta}, sigma={sigma}: got {got:.6f}, but the marginal density of y in "
            f"chapter 05 gives {expected:.6f}"
        )
    # differentiable in log delta and in log sigma: compare with finite differences
    for name, at in (("delta", lambda t: (t.exp(), 0.3)), ("sigma", lambda t: (1.0, t.exp()))):
        t = torch.tensor(0.4 if name == "delta" else math.log(0.3), dtype=DT, requires_grad=True)
        out = mod.log_evidence(Phi, y, *at(t))
        grad = None
        if isinstance(out, torch.Tensor) and out.requires_grad:
            (grad,) = torch.autograd.grad(out, t, allow_unused=True)
        assert grad is not None, (
            f"no gradient in {name} reached the log evidence: keep the computation in torch, "
            f"with {name} as the tensor it is given"
        )
        eps = 1e-6
        with torch.no_grad():
            up = float(mod.log_evidence(Phi, y, *at(t + eps)))
            down = float(mod.log_evidence(Phi, y, *at(t - eps)))
        fd = (up - down) / (2 * eps)
        assert abs(float(grad) - fd) < 1e-5, (
            f"the gradient in {name} is {float(grad):.6f}, but a finite difference gives {fd:.6f}"
        )


def test_5_2_fit_and_occam(mod):
    Phi, y = _data(seed=1)
    fit, occam = mod.fit_and_occam(Phi, y, 0.7, 0.4)
    t = evidence_terms(Phi, y, 0.7, 0.4)
    assert abs(float(fit + occam) - _gaussian_evidence(Phi, y, 0.7, 0.4)) < 1e-8, (
        "data fit + log Occam factor should add up to the log evidence"
    )
    assert abs(float(fit) - float(t["data_fit"])) < 1e-8, (
        "the data fit is the log likelihood of y at the posterior mean"
    )
    assert abs(float(occam) - float(t["occam"])) < 1e-8, "the log Occam factor is off"


def test_5_2_best_degree(mod):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(40, generator=g, dtype=DT) * 2 - 1
    for coeffs in ([0.5, -1.0], [0.2, 1.0, -2.0, 0.0, 1.5]):
        y = sum(c * x**k for k, c in enumerate(coeffs)) + 0.05 * torch.randn(
            40, generator=g, dtype=DT
        )
        ev = [
            float(evidence_terms(polynomial_features(x, d), y, 1.0, 0.05)["log_evidence"])
            for d in range(9)
        ]
        best = max(range(9), key=ev.__getitem__)
        got = mod.best_degree(x, y, 8, 1.0, 0.05)
        assert got == best, (
            f"data from a degree-{len(coeffs) - 1} polynomial: you chose degree {got}, "
            f"the evidence prefers {best}"
        )


def test_5_2_best_degree_can_be_the_largest_allowed(mod):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, generator=g, dtype=DT) * 2 - 1
    y = 0.3 - x + 0.5 * x**2 + 2.0 * x**3 + 0.05 * torch.randn(40, generator=g, dtype=DT)
    ev = [
        float(evidence_terms(polynomial_features(x, d), y, 1.0, 0.05)["log_evidence"])
        for d in range(4)
    ]
    assert max(range(4), key=ev.__getitem__) == 3  # the evidence prefers the cubic
    got = mod.best_degree(x, y, 3, 1.0, 0.05)
    assert got == 3, (
        f"data from a cubic, degrees 0..3 allowed: you chose degree {got}, the evidence prefers 3 "
        "(is max_degree itself among your candidates?)"
    )


def test_5_3_circulant_design(mod):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(5, 7, generator=g, dtype=DT)
    Phi = mod.circulant_design(X)
    assert tuple(Phi.shape) == (35, 7), f"expected (N * n, n) = (35, 7), got {tuple(Phi.shape)}"
    for seed in range(3):
        w = torch.randn(7, generator=torch.Generator().manual_seed(10 + seed), dtype=DT)
        # the circular convolution y[i] = sum_j w[j] x[(i - j) mod n], by the FFT
        expect = torch.fft.ifft(torch.fft.fft(X, dim=1) * torch.fft.fft(w)).real
        torch.testing.assert_close(
            (Phi @ w).reshape(5, 7),
            expect,
            msg="(Phi @ w).reshape(N, n) is not the circular convolution of each signal with w",
        )


def test_5_3_conv_minus_fc(mod):
    g = torch.Generator().manual_seed(4)
    X = torch.randn(20, 6, generator=g, dtype=DT)
    W = torch.randn(6, 6, generator=g, dtype=DT)
    Y = X @ W.T + 0.3 * torch.randn(20, 6, generator=g, dtype=DT)
    expected = (
        linear_model_evidence(X, Y, "conv", 1.0, 0.3)["log_evidence"]
        - linear_model_evidence(X, Y, "fc", 1.0, 0.3)["log_evidence"]
    )
    got = float(mod.conv_minus_fc(X, Y, 1.0, 0.3))
    assert abs(got - float(expected)) < 1e-7, (
        f"got {got:.4f}; expected the CONV evidence minus the FC evidence of chapter 05, "
        f"{float(expected):.4f}"
    )


@pytest.mark.parametrize("delta, noise, seed", [(1.0, 0.2, 5), (0.05, 1.0, 6), (20.0, 0.05, 7)])
def test_5_4_evidence_optimal_noise(mod, delta, noise, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(30, generator=g, dtype=DT) * 2 - 1
    Phi = polynomial_features(x, 4)
    y = torch.sin(3 * x) + noise * torch.randn(30, generator=g, dtype=DT)
    sigma = mod.evidence_optimal_noise(Phi, y, delta)
    assert isinstance(sigma, float) and sigma > 0, f"expected a positive float, got {sigma!r}"
    best = _gaussian_evidence(Phi, y, delta, sigma)
    for factor in (0.8, 0.98, 0.999, 1.001, 1.02, 1.25):
        other = _gaussian_evidence(Phi, y, delta, sigma * factor)
        assert other <= best + 1e-9, (
            f"sigma = {sigma:.5f} is not the optimum: sigma = {sigma * factor:.5f} has a larger "
            f"evidence ({other:.6f} > {best:.6f})"
        )
