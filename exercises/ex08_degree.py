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
# # Exercises 08: the degree of equivariance
#
# In your copy, `book/my-exercises/ex08_degree.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 08 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 08`.
#
# Conventions (as in `equilib.degree`): C_N has elements k = 0..N-1 (rotation by 2 pi k / N,
# counter-clockwise, `torch.rot90(x, k, dims=(-2, -1))` for N = 4); a density lambda on the grid
# has mean 1 (uniform = 1 everywhere); averaging weights are w = lambda / N (they sum to 1).
# Fourier coefficients are laid out as `[a_0, a_1..a_L, b_1..b_L]` for the series
# `a_0 + sum_m a_m cos(m theta) + b_m sin(m theta)`.

# %%
import math

import torch

# %% [markdown]
# ## Exercise 8.1: a band-limited density on C_N
#
# Write `density(coefficients, N)` that evaluates the Fourier series at the N angles of C_N,
# exponentiates, and normalises so that the mean over the grid is 1. Refuse a band limit above
# N // 2 with a `ValueError` (frequencies above N/2 alias onto lower ones on N points).


# %%
def density(coefficients: torch.Tensor, N: int) -> torch.Tensor:
    """lambda on C_N: (N,), mean 1, from coefficients (2L+1,) = [a_0, a_1..a_L, b_1..b_L]."""
    # BEGIN SOLUTION Exercise 8.1: see chapter 08, 'A band-limited density over the group': evaluate the truncated Fourier series at the group's angles, then make it positive with mean 1
    L = (coefficients.numel() - 1) // 2
    if coefficients.ndim != 1 or coefficients.numel() != 2 * L + 1:
        raise ValueError(f"coefficients must be (2L+1,), got {tuple(coefficients.shape)}")
    if L > N // 2:
        raise ValueError(f"band limit {L} is above N/2 = {N // 2} for C_{N}")
    t = 2 * math.pi * torch.arange(N, dtype=coefficients.dtype) / N
    z = coefficients[0] * torch.ones(N, dtype=coefficients.dtype)
    for m in range(1, L + 1):
        z = z + coefficients[m] * torch.cos(m * t) + coefficients[L + m] * torch.sin(m * t)
    e = torch.exp(z - z.max())
    return e / e.mean()
    # END SOLUTION


# %%
if __name__ == "__main__":
    lam = density(torch.tensor([0.0, 1.0, 0.0]), 8)
    print("lambda on C8:", lam, "mean", float(lam.mean()))

# %% [markdown]
# ## Exercise 8.2: how equivariant is a layer? Entropy and KL to uniform
#
# Write `kl_and_entropy(lam)` returning `(KL(lambda || uniform), H(w) / log N)` for a density
# `lam: (N,)` with mean 1: `KL = mean_h lam(h) log lam(h)` and `H(w) = -sum_h w(h) log w(h)` with
# `w = lam / N`. (Check for yourself that H / log N = 1 - KL / log N.)


# %%
def kl_and_entropy(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(lambda || uniform), normalised entropy) of a grid density lam: (N,) with mean 1."""
    # BEGIN SOLUTION Exercise 8.2: see chapter 08, 'Divergences, entropy and alignment': turn the mean-1 density into probabilities first; what entropy does the uniform density have?
    N = lam.numel()
    kl = (lam * torch.log(lam)).mean()
    w = lam / lam.sum()
    H = -(w * torch.log(w)).sum() / math.log(N)
    return kl, H
    # END SOLUTION


# %%
if __name__ == "__main__":
    print(kl_and_entropy(torch.ones(4)), kl_and_entropy(torch.tensor([3.7, 0.1, 0.1, 0.1])))

# %% [markdown]
# ## Exercise 8.3: the lambda-weighted C4 average of a lifting kernel
#
# A lifting kernel `K: (C', 4, C, k, k)` has one filter per output rotation g. The group element
# h acts on it by rotating space and shifting the group axis: `(h.K)[:, g] = rot90^h(K[:, g - h])`
# (indices mod 4). Write `partial_lifting_kernel(K, w)` returning `sum_h w[h] (h.K)`. With
# uniform w the result satisfies `K'[:, g] = rot90^g(K'[:, 0])`: an exactly equivariant lifting
# convolution; with w = (1, 0, 0, 0) it is K itself.


# %%
def partial_lifting_kernel(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_h w[h] (h . K) for a C4 lifting kernel K: (C', 4, C, k, k) and weights w: (4,)."""
    # BEGIN SOLUTION Exercise 8.3: see chapter 08, 'The partial group convolution': how does a group element act on a lifting kernel (its orientation axis and its taps)? Weight each transformed copy
    if K.ndim != 5 or K.shape[1] != 4:
        raise ValueError(f"K must be (C', 4, C, k, k), got {tuple(K.shape)}")
    if w.shape != (4,) or bool((w < 0).any()):
        raise ValueError("w must be 4 non-negative weights")
    out = torch.zeros_like(K)
    for h in range(4):
        out = out + w[h] * torch.rot90(torch.roll(K, h, dims=1), h, dims=(-2, -1))
    return out
    # END SOLUTION


# %%
if __name__ == "__main__":
    K = torch.randn(2, 4, 1, 3, 3)
    Ku = partial_lifting_kernel(K, torch.full((4,), 0.25))
    print("equivariant:", torch.allclose(Ku[:, 1], torch.rot90(Ku[:, 0], 1, dims=(-2, -1))))

# %% [markdown]
# ## Exercise 8.4: the log-determinant behind the Occam factor, on one orbit
#
# For C_N the averaging operator acts on every orbit of N kernel entries as the circulant matrix
# `C[a, b] = w[(a - b) mod N]`. With a diagonal curvature `d: (N,)` on that orbit, the Laplace
# evidence pays `1/2 log det(C^T diag(d) C + delta I)`. Write `orbit_complexity(w, d, delta)`
# returning that log-determinant (without the 1/2). Compare uniform w (C has rank one) with
# w = (1, 0, ..., 0) (C = I) to see why the evidence favours equivariant layers when the data
# allow it.


# %%
def orbit_complexity(w: torch.Tensor, d: torch.Tensor, delta: float) -> torch.Tensor:
    """log det(C^T diag(d) C + delta I), C[a, b] = w[(a - b) mod N]; w, d: (N,)."""
    # BEGIN SOLUTION Exercise 8.4: see chapter 08, 'Learning lambda by the marginal likelihood': C is circulant, built from w alone; the Occam term is a log-determinant
    N = w.numel()
    idx = (torch.arange(N)[:, None] - torch.arange(N)[None, :]) % N
    C = w[idx]
    A = C.T @ torch.diag(d) @ C + delta * torch.eye(N, dtype=w.dtype)
    return torch.logdet(A)
    # END SOLUTION


# %%
if __name__ == "__main__":
    d = torch.tensor([5.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    print("uniform:", float(orbit_complexity(torch.full((4,), 0.25, dtype=torch.float64), d, 1.0)))
    print(
        "identity:",
        float(orbit_complexity(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), d, 1.0)),
    )
