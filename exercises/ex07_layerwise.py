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
# # Exercises 07: learning layer-wise equivariance
#
# In your copy, `book/my-exercises/ex07_layerwise.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 07 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 07`.
#
# Conventions (as in `equilib.train` and `equilib.discover`): a model's trainable tensors are
# `theta_1 ... theta_L` in `model.named_parameters()` order, each with its own prior precision
# `delta_l` (prior `N(0, 1/delta_l)` on every entry of `theta_l`); `N` is the number of training
# examples.

# %%
import math

import torch
from torch.nn import functional as F

# %% [markdown]
# ## Exercise 7.1: the MAP objective with a per-tensor prior
#
# Write `map_objective(logits, y, params, delta, n_data)` returning the scalar
# `mean_i CE(logits_i, y_i) + 1/2 sum_l delta_l |theta_l|^2 / N`: the negative log joint
# divided by `N`. Its gradient in `theta_l` is the data gradient plus `delta_l theta_l / N`, so
# the prior acts as a weight decay of strength `delta_l / N` on that tensor alone.
# `equilib.train.prior_penalty` is the reference for the prior term.


# %%
def map_objective(logits: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor],
                  delta: torch.Tensor, n_data: int) -> torch.Tensor:
    """``mean CE(logits, y) + 1/2 sum_l delta_l |theta_l|^2 / N``; logits (B, K), y (B,)."""
    # BEGIN SOLUTION Exercise 7.1: F.cross_entropy averages; add the weighted squared norms / (2N)
    prior = sum(d * p.pow(2).sum() for d, p in zip(delta, params))
    return F.cross_entropy(logits, y) + 0.5 * prior / n_data
    # END SOLUTION


# %%
if __name__ == "__main__":
    theta = [torch.ones(2, 3, requires_grad=True)]
    loss = map_objective(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]), theta, torch.tensor([10.0]),
                         5)
    loss.backward()
    print("loss", float(loss), "(log 3 + 1/2 * 10 * 6 / 5 =", math.log(3) + 6.0, ")")
    print("gradient of theta = delta * theta / N:", theta[0].grad[0, 0].item())

# %% [markdown]
# ## Exercise 7.2: one prior precision per path
#
# A path (the FC or the conv path of a block) has several weight tensors, each with its own
# precision. Summarise them the way `equilib.discover.layer_structure` does: the inverse of the
# mean prior variance per weight, `n / sum_l (n_l / delta_l)` with `n_l` the size of tensor `l`
# and `n = sum_l n_l` (a size-weighted harmonic mean). A large value means the path's weights
# are held at zero: the path is pruned.


# %%
def path_precision(deltas: list[float], sizes: list[int]) -> float:
    """Size-weighted harmonic mean ``n / sum_l (n_l / delta_l)`` of per-tensor precisions."""
    # BEGIN SOLUTION Exercise 7.2: average the prior variances 1/delta_l weighted by n_l, invert
    n = sum(sizes)
    return n / sum(s / d for s, d in zip(sizes, deltas))
    # END SOLUTION


# %%
if __name__ == "__main__":
    print(path_precision([1.0, 100.0], [10, 10]), "(the small precision dominates: 1.98)")

# %% [markdown]
# ## Exercise 7.3: effective number of parameters of a Kronecker block
#
# For a tensor whose curvature is `B (x) A` (KFAC) and whose prior precision is `delta`, the
# eigenvalues of the curvature are all products `lambda_ij = b_i a_j` of the factors'
# eigenvalues. The effective number of parameters is
# `gamma = sum_ij lambda_ij / (lambda_ij + delta)`: directions the data determine well (large
# `lambda`) count 1, directions the prior dominates count 0. MacKay's fixed point for the
# precision is then `delta = gamma / |theta|^2`. Write both (never build the Kronecker product).


# %%
def effective_parameters(A: torch.Tensor, B: torch.Tensor, delta: float) -> torch.Tensor:
    """``sum_ij (b_i a_j) / (b_i a_j + delta)`` for symmetric PSD factors A (m, m), B (k, k)."""
    # BEGIN SOLUTION Exercise 7.3: eigvalsh of each factor, an outer product, then the sum
    lam = torch.outer(torch.linalg.eigvalsh(B), torch.linalg.eigvalsh(A)).clamp_min(0)
    return (lam / (lam + delta)).sum()
    # END SOLUTION


def mackay_precision(gamma: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """MacKay's update ``delta = gamma / |theta|^2``."""
    # BEGIN SOLUTION Exercise 7.3: divide by the squared norm of the whole tensor
    return gamma / theta.pow(2).sum()
    # END SOLUTION


# %%
if __name__ == "__main__":
    A, B = torch.diag(torch.tensor([4.0, 1e-4])), torch.eye(3)
    print("gamma:", float(effective_parameters(A, B, 1.0)), "(three well-determined directions)")

# %% [markdown]
# ## Exercise 7.4: hyperparameter steps on the evidence
#
# Between MAP epochs, the training loop holds the fitted Laplace approximation fixed and takes
# a few Adam steps on `log delta` (one value per tensor) to maximise the evidence. Write
# `hyper_steps(la, delta, steps, lr, n_data)`: start from `log delta`, minimise
# `-la.log_marginal_likelihood(prior_precision=log_delta.exp()) / n_data` with
# `torch.optim.Adam([log_delta], lr=lr)` for `steps` steps, and return the new `delta`
# (detached). Optimising `log delta` keeps every precision positive.


# %%
def hyper_steps(la, delta: torch.Tensor, steps: int, lr: float, n_data: int) -> torch.Tensor:
    """Adam steps on ``log delta`` of ``-log p(D | delta) / N``; returns the new ``delta``."""
    # BEGIN SOLUTION Exercise 7.4: a leaf tensor log_delta with requires_grad, Adam, backward
    log_delta = delta.detach().log().clone().requires_grad_(True)
    opt = torch.optim.Adam([log_delta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = -la.log_marginal_likelihood(prior_precision=log_delta.exp()) / n_data
        loss.backward()
        opt.step()
    return log_delta.detach().exp()
    # END SOLUTION


# %%
if __name__ == "__main__":
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from equilib.laplace import KronLaplace

    torch.manual_seed(0)
    X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    la = KronLaplace(model, "classification").fit(DataLoader(TensorDataset(X, y), batch_size=32))
    d0 = torch.ones(4, dtype=torch.float64)
    d1 = hyper_steps(la, d0, 50, 0.1, 64)
    print("log evidence before", float(la.log_marginal_likelihood(d0)), "after",
          float(la.log_marginal_likelihood(d1)))
