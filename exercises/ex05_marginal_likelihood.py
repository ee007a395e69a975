# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exercises 05: the marginal likelihood
#
# In your copy, `book/my-exercises/ex05_marginal_likelihood.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 05 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 05`.
#
# Model (as in chapter 05): `y = Phi theta + eps`, `eps ~ N(0, sigma^2 I)`, prior
# `theta ~ N(0, I / delta)`. Use float64 tensors and only `torch` (no `equilib.laplace`: the
# grading tests compare your answers with it).

# %%
import math

import torch

# %% [markdown]
# ## Exercise 5.1: the closed-form log evidence
#
# Write `log_evidence(Phi, y, delta, sigma)` returning the scalar
# `log p(y) = log N(y; 0, sigma^2 I + Phi Phi^T / delta)` for `Phi: (N, D)`, `y: (N,)`.
# Any exact formula is fine: the N x N Gaussian marginal, or the D x D route through the
# posterior precision `P = Phi^T Phi / sigma^2 + delta I` and mean `m = P^-1 Phi^T y / sigma^2`.
# It must be differentiable in `delta` and `sigma` (they may be tensors).


# %%
def log_evidence(Phi: torch.Tensor, y: torch.Tensor, delta, sigma) -> torch.Tensor:
    """log N(y; 0, sigma^2 I + Phi Phi^T / delta): a scalar tensor."""
    # BEGIN SOLUTION Exercise 5.1: see chapter 05, 'Bayesian linear regression and its evidence': once the weights are integrated out, y is Gaussian; one factorisation of its covariance gives both the solve and the log-determinant
    N = Phi.shape[0]
    C = sigma**2 * torch.eye(N, dtype=Phi.dtype) + Phi @ Phi.T / delta
    L = torch.linalg.cholesky(C)
    alpha = torch.cholesky_solve(y.unsqueeze(1), L).squeeze(1)
    logdet = 2 * torch.log(torch.diagonal(L)).sum()
    return -0.5 * (y @ alpha + logdet + N * math.log(2 * math.pi))
    # END SOLUTION


# %%
if __name__ == "__main__":
    Phi = torch.randn(20, 3, dtype=torch.float64)
    y = Phi @ torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(
        20, dtype=torch.float64
    )
    print("log evidence:", float(log_evidence(Phi, y, 1.0, 0.1)))

# %% [markdown]
# ## Exercise 5.2: data fit, Occam factor and the best degree
#
# Write `fit_and_occam(Phi, y, delta, sigma)` returning the pair `(data_fit, log_occam)` with
# `data_fit = log N(y; Phi m, sigma^2 I)` (the likelihood at the posterior mean `m`) and
# `log_occam = log p(y) - data_fit = D/2 log delta - delta/2 |m|^2 - 1/2 log det P`.
# Then write `best_degree(x, y, max_degree, delta, sigma)`: the degree d in 0..max_degree whose
# polynomial features `1, x, ..., x^d` give the largest evidence.


# %%
def fit_and_occam(Phi: torch.Tensor, y: torch.Tensor, delta, sigma) -> tuple:
    """(data fit, log Occam factor) of Bayesian linear regression: two scalar tensors."""
    # BEGIN SOLUTION Exercise 5.2: see chapter 05, 'Data fit minus Occam factor': the data fit is the likelihood at the posterior mean, and the Occam factor is everything else in the evidence
    N, D = Phi.shape
    P = Phi.T @ Phi / sigma**2 + delta * torch.eye(D, dtype=Phi.dtype)
    m = torch.linalg.solve(P, Phi.T @ y / sigma**2)
    r = y - Phi @ m
    data_fit = (
        -0.5 * N * math.log(2 * math.pi)
        - N * torch.log(torch.as_tensor(sigma, dtype=Phi.dtype))
        - r @ r / (2 * sigma**2)
    )
    logdet = torch.linalg.slogdet(P)[1]
    occam = (
        0.5 * D * torch.log(torch.as_tensor(delta, dtype=Phi.dtype))
        - 0.5 * delta * m @ m
        - 0.5 * logdet
    )
    return data_fit, occam
    # END SOLUTION


def best_degree(x: torch.Tensor, y: torch.Tensor, max_degree: int, delta, sigma) -> int:
    """The polynomial degree in 0..max_degree with the largest evidence."""
    # BEGIN SOLUTION Exercise 5.2: see chapter 05, 'Choosing the polynomial degree': one evidence per candidate set of features, then keep the best
    evidences = []
    for d in range(max_degree + 1):
        Phi = x.unsqueeze(1) ** torch.arange(d + 1, dtype=x.dtype)
        fit, occam = fit_and_occam(Phi, y, delta, sigma)
        evidences.append(float(fit + occam))
    return int(max(range(len(evidences)), key=evidences.__getitem__))
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.linspace(-1, 1, 30, dtype=torch.float64)
    y = x - 2 * x**2 + 0.05 * torch.randn(30, dtype=torch.float64)
    print("best degree:", best_degree(x, y, 8, 1.0, 0.05))

# %% [markdown]
# ## Exercise 5.3: a translation-equivariant linear map
#
# For cyclic signals `x` in `R^n`, the circular convolution `y[i] = sum_j w[j] x[(i - j) mod n]`
# is linear in its `n` weights `w`. Write `circulant_design(X)` for `X: (N, n)` returning the
# design matrix `(N * n, n)` (row `k * n + i` for output `i` of signal `k`) such that
# `(Phi @ w).reshape(N, n)` is the circular convolution of every signal with `w`. Then write
# `conv_minus_fc(X, Y, delta, sigma)`: the log evidence of the CONV model minus that of the FC
# model `Y = X W^T` (`n^2` weights, the outputs are independent regressions on `X`), using your
# `log_evidence`.


# %%
def circulant_design(X: torch.Tensor) -> torch.Tensor:
    """(N * n, n) design matrix of the circular convolution."""
    # BEGIN SOLUTION Exercise 5.3: see chapter 05, 'Symmetry as a prior: CONV vs FC, exactly': in output i of one signal, which input value multiplies the weight w[j]?
    n = X.shape[1]
    i = torch.arange(n)
    return X[:, (i.unsqueeze(1) - i.unsqueeze(0)) % n].reshape(-1, n)
    # END SOLUTION


def conv_minus_fc(X: torch.Tensor, Y: torch.Tensor, delta, sigma) -> torch.Tensor:
    """log p(Y | CONV) - log p(Y | FC) for signals X, Y: (N, n)."""
    # BEGIN SOLUTION Exercise 5.3: see chapter 05, 'Symmetry as a prior': CONV shares its weights over all outputs, FC gives each output coordinate its own weights and prior; how do the evidences of independent regressions combine?
    conv = log_evidence(circulant_design(X), Y.reshape(-1), delta, sigma)
    fc = sum(log_evidence(X, Y[:, i], delta, sigma) for i in range(Y.shape[1]))
    return conv - fc
    # END SOLUTION


# %%
if __name__ == "__main__":
    X = torch.randn(30, 6, dtype=torch.float64)
    w = torch.randn(6, dtype=torch.float64)
    Y = (circulant_design(X) @ w).reshape(30, 6) + 0.3 * torch.randn(30, 6, dtype=torch.float64)
    print(
        "log p(Y | CONV) - log p(Y | FC) on symmetric data:", float(conv_minus_fc(X, Y, 1.0, 0.3))
    )

# %% [markdown]
# ## Exercise 5.4: how noisy are the data? The evidence decides
#
# Chapter 05 lets the evidence choose the prior precision `delta`, and finds MacKay's fixed point
# at the optimum. The noise level `sigma` is a hyperparameter too. Write
# `evidence_optimal_noise(Phi, y, delta)`: the `sigma > 0` that maximises `log p(y | delta, sigma)`
# for the given `delta`, as a float, accurate enough that the evidence's derivative there is
# negligible. Derive the condition the optimum satisfies in the same way as the chapter did for
# `delta` (which terms of the evidence depend on `sigma`?), or find the optimum numerically: the
# grader checks that no nearby `sigma` has a larger evidence, with an evidence of its own.


# %%
def evidence_optimal_noise(Phi: torch.Tensor, y: torch.Tensor, delta: float) -> float:
    """The noise level ``sigma`` that maximises the log evidence for the given ``delta``."""
    # BEGIN SOLUTION Exercise 5.4: see chapter 05, 'Data fit minus Occam factor' and MacKay's fixed point for delta: which terms of the evidence depend on sigma? The posterior mean moves with sigma too, yet at the optimum of the joint that movement does not change the derivative: why?
    N = Phi.shape[0]
    sigma = float(y.std())
    for _ in range(500):
        P = Phi.T @ Phi / sigma**2 + delta * torch.eye(Phi.shape[1], dtype=Phi.dtype)
        m = torch.linalg.solve(P, Phi.T @ y / sigma**2)
        lam = torch.linalg.eigvalsh(Phi.T @ Phi / sigma**2)
        gamma = float((lam / (lam + delta)).sum())
        new = (float((y - Phi @ m).pow(2).sum()) / (N - gamma)) ** 0.5
        if abs(new - sigma) < 1e-13 * sigma:
            return new
        sigma = new
    return sigma
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.linspace(-1, 1, 40, dtype=torch.float64)
    Phi = x.unsqueeze(1) ** torch.arange(4, dtype=torch.float64)
    y = 1 - x + 2 * x**3 + 0.2 * torch.randn(40, dtype=torch.float64)
    s = evidence_optimal_noise(Phi, y, 1.0)
    print(f"evidence-optimal sigma {s:.4f} (the data were made with 0.2)")
    for f in (0.9, 1.0, 1.1):
        print(f"  sigma {f * s:.4f}: log evidence {float(log_evidence(Phi, y, 1.0, f * s)):.4f}")
