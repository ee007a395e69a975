"""Exact evidence of Bayesian linear models: the reference the Laplace approximation builds on.

Model: y = Phi theta + eps, eps ~ N(0, sigma^2 I), prior theta ~ N(0, I / delta). Posterior
precision P = Phi^T Phi / sigma^2 + delta I, mean m = P^-1 Phi^T y / sigma^2, and

    log p(y) = log p(y | m) + log Occam,
    log p(y | m) = -N/2 log(2 pi sigma^2) - |y - Phi m|^2 / (2 sigma^2)         (data fit)
    log Occam    = D/2 log delta - delta/2 |m|^2 - 1/2 log det P              (<= 0 for a
                   prior wider than the posterior: the posterior volume over the prior volume).

For a linear-Gaussian model the Laplace approximation at m is exact.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "polynomial_features",
    "blr_posterior",
    "evidence_terms",
    "log_evidence",
    "circulant_design",
    "linear_model_evidence",
]


def polynomial_features(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Features 1, x, ..., x^degree: x (N,) -> (N, degree + 1)."""
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be a non-negative int, got {degree!r}")
    if x.dim() != 1:
        raise ValueError(f"x must be 1-D (N,), got shape {tuple(x.shape)}")
    return x.unsqueeze(1) ** torch.arange(degree + 1, device=x.device, dtype=x.dtype)


def _check(Phi: torch.Tensor, y: torch.Tensor, prior_precision, sigma_noise) -> tuple:
    if Phi.dim() != 2 or y.dim() != 1 or y.shape[0] != Phi.shape[0]:
        raise ValueError(
            f"expected Phi (N, D) and y (N,), got {tuple(Phi.shape)} and {tuple(y.shape)}"
        )
    delta = torch.as_tensor(prior_precision, dtype=Phi.dtype, device=Phi.device)
    sigma = torch.as_tensor(sigma_noise, dtype=Phi.dtype, device=Phi.device)
    if not bool((delta > 0).all()) or not bool((sigma > 0).all()):
        raise ValueError(
            f"prior_precision and sigma_noise must be positive, got {prior_precision} and "
            f"{sigma_noise}"
        )
    return delta, sigma


def blr_posterior(Phi: torch.Tensor, y: torch.Tensor, prior_precision=1.0, sigma_noise=1.0):
    """Posterior mean m (D,) and precision P (D, D) of Bayesian linear regression."""
    delta, sigma = _check(Phi, y, prior_precision, sigma_noise)
    D = Phi.shape[1]
    P = Phi.T @ Phi / sigma**2 + delta * torch.eye(D, dtype=Phi.dtype, device=Phi.device)
    m = torch.linalg.solve(P, Phi.T @ y / sigma**2)
    return m, P


def evidence_terms(
    Phi: torch.Tensor, y: torch.Tensor, prior_precision=1.0, sigma_noise=1.0
) -> dict:
    """The log evidence and its two parts: ``{"log_evidence", "data_fit", "occam",
    "effective_dimensions"}`` (scalars; differentiable in the hyperparameters).

    ``effective_dimensions`` = sum_i lambda_i / (lambda_i + delta), lambda = eig(Phi^T Phi /
    sigma^2): MacKay's effective number of parameters ``gamma``.
    """
    delta, sigma = _check(Phi, y, prior_precision, sigma_noise)
    N, D = Phi.shape
    m, P = blr_posterior(Phi, y, delta, sigma)
    resid = y - Phi @ m
    data_fit = -0.5 * N * torch.log(2 * math.pi * sigma**2) - resid.pow(2).sum() / (2 * sigma**2)
    logdet = 2 * torch.log(torch.diagonal(torch.linalg.cholesky(P))).sum()
    occam = 0.5 * D * torch.log(delta) - 0.5 * delta * m.pow(2).sum() - 0.5 * logdet
    lam = torch.linalg.eigvalsh(Phi.T @ Phi / sigma**2).clamp_min(0)
    return {
        "log_evidence": data_fit + occam,
        "data_fit": data_fit,
        "occam": occam,
        "effective_dimensions": (lam / (lam + delta)).sum(),
    }


def log_evidence(
    Phi: torch.Tensor, y: torch.Tensor, prior_precision=1.0, sigma_noise=1.0
) -> torch.Tensor:
    """log p(y) = log N(y; 0, sigma^2 I + Phi Phi^T / delta), via the posterior (see module)."""
    return evidence_terms(Phi, y, prior_precision, sigma_noise)["log_evidence"]


def circulant_design(X: torch.Tensor) -> torch.Tensor:
    """Design matrix of the translation-equivariant linear map on cyclic 1-D signals.

    y[k, i] = sum_j w[j] x[k, (i - j) mod n] (a circular convolution with n weights) is linear
    in w with rows Phi[(k, i), j] = x[k, (i - j) mod n]. X: (N, n) -> (N * n, n).
    """
    if X.dim() != 2:
        raise ValueError(f"X must be (N, n) signals, got shape {tuple(X.shape)}")
    n = X.shape[1]
    i = torch.arange(n, device=X.device)
    return X[:, (i.unsqueeze(1) - i.unsqueeze(0)) % n].reshape(-1, n)


def linear_model_evidence(
    X: torch.Tensor, Y: torch.Tensor, model: str, prior_precision=1.0, sigma_noise=1.0
) -> dict:
    """Evidence terms of a linear map R^n -> R^n on cyclic signals, X, Y: (N, n).

    ``model="fc"``: unconstrained Y = X W^T, n^2 weights (independent outputs, so the terms are
    sums over the n output coordinates); ``model="conv"``: Y = w (*) X circular convolution,
    n weights (``circulant_design``). Returns the dict of ``evidence_terms``.
    """
    if X.shape != Y.shape or X.dim() != 2:
        raise ValueError(f"X and Y must both be (N, n), got {tuple(X.shape)}, {tuple(Y.shape)}")
    if model == "conv":
        return evidence_terms(circulant_design(X), Y.reshape(-1), prior_precision, sigma_noise)
    if model != "fc":
        raise ValueError(f"model must be 'fc' or 'conv', got {model!r}")
    parts = [evidence_terms(X, Y[:, i], prior_precision, sigma_noise) for i in range(Y.shape[1])]
    return {k: sum(p[k] for p in parts) for k in parts[0]}
