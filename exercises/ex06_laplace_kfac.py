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
# # Exercises 06: Laplace and KFAC
#
# In your copy, `book/my-exercises/ex06_laplace_kfac.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 06 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 06`.
#
# Conventions (as in `equilib.laplace` and chapter 06): a weight `W: (out, in)` has the KFAC block
# `B (x) A` in the order of `W.flatten()` (`torch.kron(B, A)`), with `A = mean_n a_n a_n^T` over
# the layer inputs and `B = sum_n sum_c g_nc g_nc^T` over the output gradients `g_nc` obtained by
# backpropagating the columns of a square root `L_n` (`L_n L_n^T = Lambda_n`) of the softmax
# cross-entropy Hessian `Lambda_n = diag(p_n) - p_n p_n^T` (exercise 6.2 finds one).

# %%
import torch
from torch import nn

# %% [markdown]
# ## Exercise 6.1: the Kronecker log-determinant identity
#
# Write `kron_logdet(A, B, scale, delta)` returning `log det(scale * B (x) A + delta I)` for
# symmetric positive semi-definite `A: (m, m)`, `B: (k, k)`, *without* forming the `mk x mk`
# matrix. (`scale` is chapter 06's `1 / T`. The arguments come in the order of
# `equilib.laplace.kfac.kron_logdet`, which takes the factors' eigenvalues rather than the factors,
# because the library decomposes each factor once and reuses the eigenvalues for every `delta`.)


# %%
def kron_logdet(A: torch.Tensor, B: torch.Tensor, scale, delta) -> torch.Tensor:
    """log det(scale * kron(B, A) + delta I) without forming the Kronecker product."""
    # BEGIN SOLUTION Exercise 6.1: see chapter 06, 'The Kronecker log-determinant identity': what are the eigenvalues of a Kronecker product, and what does adding delta I do to them?
    lA = torch.linalg.eigvalsh(A).clamp_min(0)
    lB = torch.linalg.eigvalsh(B).clamp_min(0)
    return torch.log(scale * lB.unsqueeze(1) * lA.unsqueeze(0) + delta).sum()
    # END SOLUTION


# %%
if __name__ == "__main__":
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    A, B = a @ a.T, b @ b.T
    dense = torch.linalg.slogdet(torch.kron(B, A) + 0.5 * torch.eye(20, dtype=torch.float64))[1]
    print(float(kron_logdet(A, B, 1.0, 0.5)), float(dense))

# %% [markdown]
# ## Exercise 6.2: a square root of the output Hessian, and KFAC factors from hooks
#
# Chapter 06 backpropagates "the columns of a square root of `Lambda_n`" without saying which
# one. Find one: write `softmax_hessian_root(p)` for class probabilities `p: (N, C)` (rows sum to
# one) returning `L: (N, C, C)` with `L[n] @ L[n].T == diag(p[n]) - outer(p[n], p[n])`. Derive it
# on paper; `Lambda_n` is singular, so not every factorisation routine applies. Any root gives the
# same `B`: why?
#
# Then write `linear_kfac_factors(model, layer, X)` for a classifier `model` (logits `(N, C)`)
# that contains the `nn.Linear` module `layer` (called once per forward, on inputs `(N, in)`):
# catch the layer's input `a` and output `s` during one forward pass, backpropagate each column
# of your root from the logits to `s`, and return `(A, B)` with `A = a^T a / N` (`(in, in)`) and
# `B` the sum over examples and columns of the outer products of those output gradients
# (`(out, out)`). Leave the model as you found it.


# %%
def softmax_hessian_root(p: torch.Tensor) -> torch.Tensor:
    """``L: (N, C, C)`` with ``L[n] L[n]^T = diag(p[n]) - p[n] p[n]^T`` for ``p: (N, C)``."""
    # BEGIN SOLUTION Exercise 6.2: see chapter 06, 'The Laplace approximation and the GGN': write Lambda as a sum over classes of rank-one terms, using that the probabilities sum to one
    eye = torch.eye(p.shape[1], dtype=p.dtype)
    # column c of L[n] is sqrt(p_nc) (e_c - p_n)
    return (eye.unsqueeze(0) - p.unsqueeze(1)).transpose(1, 2) * p.sqrt().unsqueeze(1)
    # END SOLUTION


def linear_kfac_factors(model: nn.Module, layer: nn.Linear, X: torch.Tensor) -> tuple:
    """(A, B) KFAC factors of ``layer`` under the exact GGN of softmax cross-entropy."""
    # BEGIN SOLUTION Exercise 6.2: see chapter 06, 'KFAC: one Kronecker product per layer': catch the layer's input and output during the forward pass, then backpropagate from the logits once per column of the root
    store = {}

    def hook(module, inputs, output):
        store["a"], store["s"] = inputs[0].detach(), output

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(X)
    finally:
        handle.remove()
    a, s = store["a"], store["s"]
    L = softmax_hessian_root(torch.softmax(logits.detach(), dim=-1))
    A = a.T @ a / a.shape[0]
    B = torch.zeros(s.shape[1], s.shape[1], dtype=s.dtype)
    for c in range(L.shape[2]):
        (g,) = torch.autograd.grad(logits, s, grad_outputs=L[:, :, c], retain_graph=True)
        B = B + g.T @ g
    return A, B
    # END SOLUTION


# %%
if __name__ == "__main__":
    p = torch.softmax(torch.randn(2, 3, dtype=torch.float64), dim=-1)
    L = softmax_hessian_root(p)
    print(
        "|L L^T - Lambda| =",
        float(
            (L @ L.transpose(1, 2) - torch.diag_embed(p) + p.unsqueeze(2) * p.unsqueeze(1))
            .abs()
            .max()
        ),
    )
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    A, B = linear_kfac_factors(net, net[0], torch.randn(10, 4, dtype=torch.float64))
    print(A.shape, B.shape)

# %% [markdown]
# ## Exercise 6.3: effective dimensions and MacKay's update
#
# For a weight with KFAC factors `A`, `B` and prior precision `delta`, the posterior precision
# of the block is `scale * B (x) A + delta I`. Write `effective_dimensions(A, B, scale, delta)`
# returning the block's effective number of parameters (chapter 05's `gamma`, now for this
# curvature), again without forming the Kronecker product, and `mackay_update(A, B, weight,
# scale, delta)` returning MacKay's new precision for the block (chapter 05's fixed point).


# %%
def effective_dimensions(A: torch.Tensor, B: torch.Tensor, scale, delta) -> torch.Tensor:
    """Effective number of parameters of the block with curvature ``scale * B (x) A``."""
    # BEGIN SOLUTION Exercise 6.3: see chapter 05, 'Data fit minus Occam factor' (gamma), and chapter 06, 'The Kronecker log-determinant identity' for the eigenvalues of this curvature
    lam = (
        scale
        * torch.linalg.eigvalsh(B).clamp_min(0).unsqueeze(1)
        * torch.linalg.eigvalsh(A).clamp_min(0).unsqueeze(0)
    )
    return (lam / (lam + delta)).sum()
    # END SOLUTION


def mackay_update(
    A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor, scale, delta
) -> torch.Tensor:
    """MacKay's fixed-point step for the prior precision of ``weight``."""
    # BEGIN SOLUTION Exercise 6.3: see chapter 05, 'Data fit minus Occam factor': MacKay's fixed point, with this block's effective dimensions and weights
    return effective_dimensions(A, B, scale, delta) / weight.detach().pow(2).sum()
    # END SOLUTION


# %%
if __name__ == "__main__":
    a, b = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 2, dtype=torch.float64)
    print("gamma:", float(effective_dimensions(a.T @ a / 50, b.T @ b, 1.0, 1.0)), "of 6")
