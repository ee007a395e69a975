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
# the layer inputs and `B = sum_n sum_c g_nc g_nc^T` over the output gradients obtained by
# backpropagating the columns `L[:, c] = sqrt(p_c) (e_c - p)` of a square root of the softmax
# cross-entropy Hessian `diag(p) - p p^T`.

# %%
import torch
from torch import nn

# %% [markdown]
# ## Exercise 6.1: the Kronecker log-determinant identity
#
# Write `kron_logdet(A, B, delta, scale)` returning `log det(scale * B (x) A + delta I)` for
# symmetric positive semi-definite `A: (m, m)`, `B: (k, k)`, *without* forming the `mk x mk`
# matrix: use one eigendecomposition of each factor.


# %%
def kron_logdet(A: torch.Tensor, B: torch.Tensor, delta, scale=1.0) -> torch.Tensor:
    """log det(scale * kron(B, A) + delta I) from the eigenvalues of A and B."""
    # BEGIN SOLUTION Exercise 6.1: eigvalsh of A and of B; sum over all pairs of log(scale * lB_i * lA_j + delta)
    lA = torch.linalg.eigvalsh(A).clamp_min(0)
    lB = torch.linalg.eigvalsh(B).clamp_min(0)
    return torch.log(scale * lB.unsqueeze(1) * lA.unsqueeze(0) + delta).sum()
    # END SOLUTION


# %%
if __name__ == "__main__":
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    A, B = a @ a.T, b @ b.T
    dense = torch.linalg.slogdet(torch.kron(B, A) + 0.5 * torch.eye(20, dtype=torch.float64))[1]
    print(float(kron_logdet(A, B, 0.5)), float(dense))

# %% [markdown]
# ## Exercise 6.2: KFAC factors of a linear layer from hooks
#
# Write `linear_kfac_factors(model, layer, X)` for a classifier `model` (logits `(N, C)`) that
# contains the `nn.Linear` module `layer` (called once per forward, on inputs `(N, in)`).
# Register a forward hook on `layer` that keeps its input `a` and its output `s`; run the model
# once; then for every class `c` backpropagate the columns `L[:, :, c]` from the logits to `s`
# (`torch.autograd.grad(logits, s, grad_outputs=..., retain_graph=True)`). Return `(A, B)` with
# `A = a^T a / N` (`(in, in)`) and `B = sum_c g_c^T g_c` (`(out, out)`). Remove the hook.


# %%
def linear_kfac_factors(model: nn.Module, layer: nn.Linear, X: torch.Tensor) -> tuple:
    """(A, B) KFAC factors of ``layer`` under the exact GGN of softmax cross-entropy."""
    # BEGIN SOLUTION Exercise 6.2: forward hook storing (inputs[0], output); p = softmax(logits); L = (I - p) * sqrt(p) per column
    store = {}

    def hook(module, inputs, output):
        store["a"], store["s"] = inputs[0].detach(), output

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(X)
    finally:
        handle.remove()
    a, s = store["a"], store["s"]
    p = torch.softmax(logits.detach(), dim=-1)
    C = p.shape[1]
    A = a.T @ a / a.shape[0]
    B = torch.zeros(s.shape[1], s.shape[1], dtype=s.dtype)
    for c in range(C):
        col = p[:, c : c + 1].sqrt() * (torch.eye(C, dtype=p.dtype)[c] - p)  # (N, C)
        (g,) = torch.autograd.grad(logits, s, grad_outputs=col, retain_graph=True)
        B = B + g.T @ g
    return A, B
    # END SOLUTION


# %%
if __name__ == "__main__":
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    A, B = linear_kfac_factors(net, net[0], torch.randn(10, 4, dtype=torch.float64))
    print(A.shape, B.shape)

# %% [markdown]
# ## Exercise 6.3: effective parameters and MacKay's update
#
# For a weight with KFAC factors `A`, `B` and prior precision `delta`, the posterior precision
# of the block is `scale * B (x) A + delta I` with eigenvalues `lambda_ij + delta`,
# `lambda_ij = scale * lB_i * lA_j`. Write `effective_parameters(A, B, delta, scale)` returning
# `gamma = sum_ij lambda_ij / (lambda_ij + delta)`, and `mackay_update(A, B, weight, delta,
# scale)` returning MacKay's new precision `gamma / |weight|^2`.


# %%
def effective_parameters(A: torch.Tensor, B: torch.Tensor, delta, scale=1.0) -> torch.Tensor:
    """gamma = sum_ij lambda_ij / (lambda_ij + delta) for lambda = scale * eig(B) x eig(A)."""
    # BEGIN SOLUTION Exercise 6.3: the eigenvalue products as in 6.1, then the sum of lambda / (lambda + delta)
    lam = scale * torch.linalg.eigvalsh(B).clamp_min(0).unsqueeze(1) \
        * torch.linalg.eigvalsh(A).clamp_min(0).unsqueeze(0)
    return (lam / (lam + delta)).sum()
    # END SOLUTION


def mackay_update(A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor, delta,
                  scale=1.0) -> torch.Tensor:
    """MacKay's fixed-point step delta <- gamma / |weight|^2."""
    # BEGIN SOLUTION Exercise 6.3: effective_parameters(...) / weight.pow(2).sum()
    return effective_parameters(A, B, delta, scale) / weight.detach().pow(2).sum()
    # END SOLUTION


# %%
if __name__ == "__main__":
    a, b = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 2, dtype=torch.float64)
    print("gamma:", float(effective_parameters(a.T @ a / 50, b.T @ b, 1.0)), "of 6")
