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
# # Exercises 04: soft equivariance
#
# In your copy, `book/my-exercises/ex04_soft_equivariance.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 04 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 04`.
#
# Conventions (as in `equilib.nn`): images `x: (B, C, H, W)`, `X = H*W` input and `Y = H'*W'`
# output positions, flattened row-major; F-FC factors `U: (C', C, X)` and `V: (C', C, Y)`.

# %%
import torch
from torch import nn

from equilib import nn as enn

# %% [markdown]
# ## Exercise 4.1: the F-FC forward pass
#
# The factored FC layer has weight `W[c', y, c, x] = V[c', c, y] U[c', c, x]` and output
# `out[b, c', y] = sum_{c, x} W[c', y, c, x] x[b, c, x] + bias[c', y]`. Write its forward pass
# without ever building `W` (nor any other tensor with both an `x` and a `y` axis): that is the
# point of the factorisation, whose cost grows with `X + Y` rather than `X * Y`. Return
# `(B, C', H', W')` for the given `out_hw = (H', W')`. The grader compares with the dense layer.


# %%
def ffc_forward(
    x: torch.Tensor, U: torch.Tensor, V: torch.Tensor, bias: torch.Tensor, out_hw: tuple[int, int]
) -> torch.Tensor:
    """F-FC: ``x: (B, C, H, W)``, ``U: (C', C, X)``, ``V: (C', C, Y)``, ``bias: (C', Y)``."""
    # BEGIN SOLUTION Exercise 4.1: see chapter 04, 'Cheaper relaxations: factored and sparsified layers': in the double sum, which factor depends on x and which on y? Do the sum that does not involve y first.
    h = torch.einsum("dcx,bcx->bdc", U, x.flatten(2))
    out = torch.einsum("dcy,bdc->bdy", V, h) + bias
    return out.reshape(x.shape[0], U.shape[0], *out_hw)
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.randn(2, 3, 4, 4)
    U, V, b = torch.randn(5, 3, 16), torch.randn(5, 3, 4), torch.zeros(5, 4)
    print(ffc_forward(x, U, V, b, (2, 2)).shape)

# %% [markdown]
# ## Exercise 4.2: the RBF interpolation basis
#
# A sparsified layer stores values `u` at `M` anchor points `Z: (M, 2)` and interpolates them to
# the `P` grid points `G: (P, 2)` with `weight = u @ Psi`,
# `Psi = (K_ZZ + noise * I)^-1 K_ZG` and `k(a, b) = exp(-0.5 |a - b|^2 / lengthscale^2)`.
# Write `rbf_interpolation(Z, G, lengthscale, noise)` returning `Psi: (M, P)`. Compute in
# float64 and solve the linear system rather than forming an inverse.


# %%
def rbf_interpolation(
    Z: torch.Tensor, G: torch.Tensor, lengthscale: float, noise: float = 1e-6
) -> torch.Tensor:
    """``Psi = (K_ZZ + noise I)^-1 K_ZG``: ``(M, P)`` for anchors ``Z: (M, 2)``, grid ``G: (P, 2)``."""
    # BEGIN SOLUTION Exercise 4.2: see chapter 04, 'Cheaper relaxations' (sparsified layers): the kernel is needed between every pair of anchors and between every anchor and grid point
    Z, G = Z.double(), G.double()

    def k(a, b):
        return torch.exp(-0.5 * torch.cdist(a, b).pow(2) / lengthscale**2)

    return torch.linalg.solve(k(Z, Z) + noise * torch.eye(len(Z), dtype=Z.dtype), k(Z, G))
    # END SOLUTION


# %%
if __name__ == "__main__":
    grid = torch.tensor([[i, j] for i in range(3) for j in range(3)], dtype=torch.float64)
    Psi = rbf_interpolation(grid, grid, 1.0)
    print("anchors on the grid: |Psi - I| =", float((Psi - torch.eye(9)).abs().max()))

# %% [markdown]
# ## Exercise 4.3: a convolution as an FC layer
#
# Write `conv_as_fc(conv, in_shape)` that returns an `equilib.nn.ImageLinear` computing exactly
# the same function as the given stride-1 `nn.Conv2d` (weights *and* bias) on inputs of shape
# `in_shape = (C, H, W)`, whatever its padding. Do not rebuild the convolution's index
# arithmetic: find the FC weights from what the layer does. The grader compares the two layers
# on random images.


# %%
def conv_as_fc(conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> enn.ImageLinear:
    """An ``ImageLinear`` with ``fc(x) == conv(x)`` for ``x: (B, *in_shape)``."""
    # BEGIN SOLUTION Exercise 4.3: see chapter 04, 'Residual pathway priors': a conv is an affine map of the image; what pins down an affine map completely?
    C, H, W = in_shape
    n = C * H * W
    with torch.no_grad():
        zero = conv(torch.zeros(1, C, H, W))
        cols = (conv(torch.eye(n).view(n, C, H, W)) - zero).reshape(n, -1)
        fc = enn.ImageLinear(in_shape, tuple(zero.shape[1:]))
        fc.linear.weight.copy_(cols.T)
        fc.linear.bias.copy_(zero.flatten())
    return fc
    # END SOLUTION


# %%
if __name__ == "__main__":
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    fc = conv_as_fc(conv, (2, 5, 5))
    x = torch.randn(4, 2, 5, 5)
    print("max |fc(x) - conv(x)| =", float((fc(x) - conv(x)).abs().max()))

# %% [markdown]
# ## Exercise 4.4: the weight norm of every path
#
# Chapters 04 and 07 track how large each path of each block is. Write `path_weight_norms(model)`
# for a model from `equilib.models.build`: a list with one dict per block, mapping each path name
# (`"fc"`, `"conv"`, ...) to the Euclidean norm of all of that path's parameters together
# (weights and biases). Use `model.blocks[i].paths`.


# %%
def path_weight_norms(model: nn.Module) -> list[dict[str, float]]:
    """Per block, ``{path name: sqrt(sum of squares of all its parameters)}``."""
    # BEGIN SOLUTION Exercise 4.4: see chapter 04, 'The key experiment': a path is a module, and its size counts all its parameters together
    out = []
    with torch.no_grad():
        for block in model.blocks:
            out.append(
                {
                    name: sum(float(p.pow(2).sum()) for p in path.parameters()) ** 0.5
                    for name, path in block.paths.items()
                }
            )
    return out
    # END SOLUTION


# %%
if __name__ == "__main__":
    from equilib.models import build

    print(path_weight_norms(build("fc+conv", (1, 16, 16))))
