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
# # Exercises 02: convolution and translation
#
# In your copy, `book/my-exercises/ex02_convolution.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 02 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 02`.
#
# Conventions (as in `equilib.nn`): images are `x: (B, C, H, W)`; a convolution is PyTorch's
# cross-correlation `y[c', p] = sum_{c, d} w[c', c, d] x[c, p + d]` with filter taps
# `d = -(k//2) .. k//2` in each direction; "circular" means positions are taken modulo the
# image size; a shift by `(dy, dx)` is `torch.roll(x, (dy, dx), dims=(-2, -1))`.

# %%
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# %% [markdown]
# ## Exercise 2.1: the FC matrix of a convolution
#
# Write `conv_matrix(w, H, W)` that returns the matrix `M: (C'*H*W, C*H*W)` of the circular
# convolution with filter `w: (C', C, k, k)` (odd `k`), so that
# `(M @ x.flatten()).view(C', H, W)` equals `F.conv2d` of `x` circularly padded. Flat indices
# are row-major: output unit `(c', y, x)` is row `(c' * H + y) * W + x`, and likewise for
# columns. Use loops over output positions and filter taps (no `equilib` helpers); the point is
# to see the banded, weight-shared structure appear.


# %%
def conv_matrix(w: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The ``(C'HW, CHW)`` matrix of a stride-1 circular convolution with ``w: (C', C, k, k)``."""
    # BEGIN SOLUTION Exercise 2.1: see chapter 02, 'A convolution is a weight-shared FC layer': which input pixel does output (y, x) read through each filter tap, once positions wrap around?
    Co, C, k, _ = w.shape
    r = k // 2
    M = torch.zeros(Co, H, W, C, H, W, dtype=w.dtype)
    for y in range(H):
        for x in range(W):
            for i in range(k):
                for j in range(k):
                    M[:, y, x, :, (y + i - r) % H, (x + j - r) % W] += w[:, :, i, j]
    return M.reshape(Co * H * W, C * H * W)
    # END SOLUTION


# %%
if __name__ == "__main__":
    w = torch.randn(2, 1, 3, 3)
    x = torch.randn(1, 1, 5, 5)
    M = conv_matrix(w, 5, 5)
    y_conv = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)
    print(
        "matrix shape",
        tuple(M.shape),
        "max error",
        float((M @ x.flatten() - y_conv.flatten()).abs().max()),
    )

# %% [markdown]
# ## Exercise 2.2: circular padding by hand
#
# Write `circular_pad(x, p)` that pads `x: (B, C, H, W)` by `p` pixels on every side with the
# pixels from the opposite side (the image as a torus), using `torch.cat` and slicing only (no
# `F.pad`). `p = 0` returns `x` unchanged.


# %%
def circular_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad ``x: (B, C, H, W)`` circularly by ``p <= min(H, W)`` pixels: ``(B, C, H+2p, W+2p)``."""
    # BEGIN SOLUTION Exercise 2.2: see chapter 02, 'Circular versus zero padding': on a torus, which rows sit just above the first row, and which just below the last? Then the same for columns.
    if p == 0:
        return x
    x = torch.cat([x[..., -p:, :], x, x[..., :p, :]], dim=-2)
    return torch.cat([x[..., :, -p:], x, x[..., :, :p]], dim=-1)
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.arange(16.0).view(1, 1, 4, 4)
    print(circular_pad(x, 1)[0, 0])

# %% [markdown]
# ## Exercise 2.3: shift-equivariant (polyphase) striding
#
# Write `polyphase_downsample(x, s)` for `x: (B, C, H, W)` with `H` and `W` divisible by `s`:
# split every example into its `s*s` polyphase components `x[:, :, i::s, j::s]`, compute each
# component's norm over *all* its channels, and return, for every example, the component with
# the largest norm: `(B, C, H/s, W/s)`. Ties go to the first component in the order
# `(i, j) = (0, 0), (0, 1), ..., (s-1, s-1)`. Then a shifted input gives a shifted output.


# %%
def polyphase_downsample(x: torch.Tensor, s: int) -> torch.Tensor:
    """Per example, the polyphase component ``x[..., i::s, j::s]`` of largest norm."""
    # BEGIN SOLUTION Exercise 2.3: see chapter 02, 'The fix: shift-equivariant striding': the choice of component must move with the input, so make it by a quantity that a shift only permutes
    comps = torch.stack([x[:, :, i::s, j::s] for i in range(s) for j in range(s)], dim=1)
    best = comps.flatten(2).norm(dim=2).argmax(dim=1)
    return comps[torch.arange(x.shape[0]), best]
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.randn(2, 3, 8, 8)
    y = polyphase_downsample(x, 2)
    y_shift = polyphase_downsample(torch.roll(x, (1, 0), dims=(-2, -1)), 2)
    found = any(
        torch.allclose(y_shift, torch.roll(y, (a, b), dims=(-2, -1)))
        for a in range(4)
        for b in range(4)
    )
    print("output of a shifted input is a shift of the output:", found)

# %% [markdown]
# ## Exercise 2.4: a shift-equivariance error
#
# Write `shift_equivariance_error(f, x, shifts)`: the largest relative error
# `|f(shift_t x) - shift_t f(x)| / |f(x)|` over the shifts `t = (dy, dx)` in `shifts` (norms over
# the whole batch). `f` maps `(B, C, H, W)` to a tensor of the same spatial size. Write it with
# `torch.roll`, not with `equilib.groups`.


# %%
def shift_equivariance_error(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shifts: Sequence[tuple[int, int]]
) -> float:
    """``max_t |f(shift_t x) - shift_t f(x)| / |f(x)|`` over the given shifts."""
    # BEGIN SOLUTION Exercise 2.4: see chapter 02, 'Circular versus zero padding': shift then apply f, apply f then shift, and measure the gap relative to f(x)
    with torch.no_grad():
        fx = f(x)
        worst = 0.0
        for t in shifts:
            err = f(torch.roll(x, t, dims=(-2, -1))) - torch.roll(fx, t, dims=(-2, -1))
            worst = max(worst, float(err.norm() / fx.norm()))
    return worst
    # END SOLUTION


# %%
if __name__ == "__main__":
    conv = torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
    zero = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(4, 1, 8, 8)
    print("circular:", shift_equivariance_error(conv, x, [(1, 0), (2, 5)]))
    print("zeros:   ", shift_equivariance_error(zero, x, [(1, 0), (2, 5)]))

# %% [markdown]
# ## Exercise 2.5: where zero padding breaks equivariance, layer after layer
#
# Chapter 02's picture shows the zero-padded convolution going wrong near the border. Make that
# exact. A network stacks `layers` stride-1 convolutions with `k x k` filters (odd `k`) and a
# nonlinearity after each; one version pads with zeros, the other circularly, with the same
# weights. Write `zero_padding_footprint(H, W, k, layers)`: a boolean `(H, W)` mask that is
# `True` at the output positions where the two versions can give different outputs (for generic
# weights and images) and `False` where they must agree. Work it out from the receptive field
# first; the grader runs both networks with random weights and compares.


# %%
def zero_padding_footprint(H: int, W: int, k: int, layers: int = 1) -> torch.Tensor:
    """``(H, W)`` bool: where a stack of zero-padded ``k x k`` convs can differ from circular."""
    # BEGIN SOLUTION Exercise 2.5: see chapter 02, 'Circular versus zero padding': an output differs only if some pixel it depends on was read across the border; how far does an output see after several layers?
    reach = layers * (k // 2)
    rows = torch.arange(H)
    cols = torch.arange(W)
    inside_rows = (rows >= reach) & (rows <= H - 1 - reach)
    inside_cols = (cols >= reach) & (cols <= W - 1 - reach)
    return ~(inside_rows[:, None] & inside_cols[None, :])
    # END SOLUTION


# %%
if __name__ == "__main__":
    print(zero_padding_footprint(8, 10, 3, layers=2).int())
