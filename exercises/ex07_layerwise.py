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
# the prior acts as a weight decay of strength `delta_l / N` on that tensor alone (the grader
# checks that gradient too).


# %%
def map_objective(
    logits: torch.Tensor,
    y: torch.Tensor,
    params: list[torch.Tensor],
    delta: torch.Tensor,
    n_data: int,
) -> torch.Tensor:
    """``mean CE(logits, y) + 1/2 sum_l delta_l |theta_l|^2 / N``; logits (B, K), y (B,)."""
    # BEGIN SOLUTION Exercise 7.1: see chapter 07, 'One precision per tensor, learned during training': the negative log joint is a data term and one Gaussian prior term per tensor, all divided by N
    prior = sum(d * p.pow(2).sum() for d, p in zip(delta, params))
    return F.cross_entropy(logits, y) + 0.5 * prior / n_data
    # END SOLUTION


# %%
if __name__ == "__main__":
    theta = [torch.ones(2, 3, requires_grad=True)]
    loss = map_objective(
        torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]), theta, torch.tensor([10.0]), 5
    )
    loss.backward()
    print("loss", float(loss), "(log 3 + 1/2 * 10 * 6 / 5 =", math.log(3) + 6.0, ")")
    print("gradient of theta = delta * theta / N:", theta[0].grad[0, 0].item())

# %% [markdown]
# ## Exercise 7.2: one prior precision per path
#
# A path (the FC or the conv path of a block) has several weight tensors, each with its own
# precision `delta_l` and size `n_l`. Summarise them as one number, the precision that chapter
# 07's tables report for the path: the single precision which, given to every weight of the path,
# gives the path the same total prior variance (the sum over its weights of their prior
# variances) as the per-tensor priors. Derive it first. A large value means the path's weights
# are held at zero: the path is pruned. Which tensor dominates the summary, the loosest or the
# tightest?


# %%
def path_precision(deltas: list[float], sizes: list[int]) -> float:
    """One precision for a path whose tensors have precisions ``deltas`` and sizes ``sizes``."""
    # BEGIN SOLUTION Exercise 7.2: see chapter 05 for what a precision is (the inverse of a prior variance); add up variances, not precisions
    n = sum(sizes)
    return n / sum(s / d for s, d in zip(sizes, deltas))
    # END SOLUTION


# %%
if __name__ == "__main__":
    print(path_precision([1.0, 100.0], [10, 10]), "for two equal tensors with precisions 1 and 100")

# %% [markdown]
# ## Exercise 7.3: the precision the evidence picks for one tensor
#
# Hold a tensor's weights `theta` and its KFAC curvature `B (x) A` fixed, as the training loop
# does between refits. As a function of that tensor's prior precision `delta` alone, the Laplace
# log evidence of chapter 06 is, up to terms that do not depend on `delta`,
# `-delta/2 |theta|^2 + n/2 log delta - 1/2 log det(B (x) A + delta I)` with `n` the number of
# entries of `theta`. Write `evidence_optimal_precision(A, B, theta)`: the `delta > 0` that
# maximises it, as a float, without forming the Kronecker product. Set the derivative to zero
# first and read the condition in chapter 07's words (effective parameters, weight norm); then
# solve it. The grader checks that no nearby `delta` does better, with a dense computation of its
# own. (What happens to the optimum as `theta` shrinks towards zero, and what does that mean for
# a path?)


# %%
def evidence_optimal_precision(A: torch.Tensor, B: torch.Tensor, theta: torch.Tensor) -> float:
    """The ``delta`` maximising ``-delta/2 |theta|^2 + n/2 log delta - 1/2 log det(B (x) A + delta I)``."""
    # BEGIN SOLUTION Exercise 7.3: see chapter 07, 'How many parameters does each path really use?': the derivative in delta vanishes where a fixed point you have met before holds; iterate it
    lam = torch.outer(torch.linalg.eigvalsh(B.double()), torch.linalg.eigvalsh(A.double()))
    lam = lam.clamp_min(0).flatten()
    norm2 = float(theta.detach().double().pow(2).sum())
    delta = lam.numel() / norm2
    for _ in range(10000):
        gamma = float((lam / (lam + delta)).sum())
        new = gamma / norm2
        if abs(new - delta) <= 1e-13 * delta:
            return new
        delta = new
    return delta
    # END SOLUTION


# %%
if __name__ == "__main__":
    a, b = torch.randn(50, 4), torch.randn(50, 3)
    A, B = a.T @ a / 50, b.T @ b
    for scale in (1.0, 0.1):
        theta = scale * torch.randn(3, 4)
        print(
            f"|theta|^2 = {float(theta.pow(2).sum()):.3f}: "
            f"delta = {evidence_optimal_precision(A, B, theta):.3f}"
        )

# %% [markdown]
# ## Exercise 7.4: hyperparameter steps on the evidence
#
# Between MAP epochs, chapter 07's training loop updates the prior precisions `delta` (one per
# tensor) so that the evidence grows, with the fitted Laplace approximation `la` held fixed.
# Write `hyper_steps(la, delta, steps, lr, n_data)` that makes that update: `steps` optimiser
# steps at learning rate `lr`, `n_data` training examples, returning the new `delta` (detached).
# Read how the loop does it in chapter 07, 'One precision per tensor, learned during training':
# which quantity does it optimise, with which optimiser, and how does it keep every precision
# positive? The grader compares your steps with the training loop's, and checks that the
# evidence rises.


# %%
def hyper_steps(la, delta: torch.Tensor, steps: int, lr: float, n_data: int) -> torch.Tensor:
    """Adam steps on ``log delta`` of ``-log p(D | delta) / N``; returns the new ``delta``."""
    # BEGIN SOLUTION Exercise 7.4: see chapter 07, 'One precision per tensor, learned during training': the curvature stays fixed during these steps, and the variable you optimise is the logarithm
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
    print(
        "log evidence before",
        float(la.log_marginal_likelihood(d0)),
        "after",
        float(la.log_marginal_likelihood(d1)),
    )

# %% [markdown]
# ## Exercise 7.5: the prior variance of a convolution's output
#
# Chapter 07 compares a block's paths by the prior variance of their *outputs*, because a
# weight's precision depends on how its path is parametrised. Take a `k x k` convolution with
# circular padding (stride 1, no bias) whose kernel entries each have the prior `N(0, 1/delta)`,
# applied to inputs `x: (B, C, H, W)`. Write `conv_output_prior_variance(x, k, delta)`: the prior
# variance of one output, averaged over every example, output channel and position, as a float.
# Derive it before you code: which inputs does one output read, and how many outputs read each
# input pixel? The result needs no convolution. (For the factored FC path, what plays the role
# of the patch, and why does the norm given to the rows of `U` change `V`'s precision but not
# this variance?)


# %%
def conv_output_prior_variance(x: torch.Tensor, k: int, delta: float) -> float:
    """Mean over outputs of the prior variance of a circular ``k x k`` convolution of ``x``."""
    # BEGIN SOLUTION Exercise 7.5: see chapter 07, 'Precisions in the units of the output': an output is linear in the kernel, so its prior variance is a squared gradient norm over delta; count the outputs that read each pixel
    return float(k * k * x.double().pow(2).sum(dim=1).mean() / delta)
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.rand(16, 3, 8, 8)
    for k in (1, 3, 5):
        print(f"k = {k}: prior variance of an output {conv_output_prior_variance(x, k, 2.0):.3f}")
