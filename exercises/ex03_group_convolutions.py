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
# # Exercises 03: group convolutions
#
# Fill in each function between its `raise NotImplementedError` line (your copy) and the end of
# the function. Each exercise ends in a cell that tries your function when you run this file as
# a notebook; grade all of them with `python3 course.py check 03`.
#
# Conventions (as in `equilib.nn` and `equilib.groups`): a quarter turn is
# `torch.rot90(t, 1, dims=(-2, -1))`; C4 feature maps have shape `(B, C, 4, H, W)` with the
# orientation axis at position 2; convolutions are circular 'same' cross-correlations (the
# helper `conv` below); the regular representation rotates every slice by `r` and rolls the
# orientation axis by `r` (`equilib.groups.Rotations(4).act_fmap`).

# %%
import torch
import torch.nn.functional as F

from equilib.groups import Rotations, equivariance_error


def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Circular 'same' cross-correlation (given): x: (B, C, H, W), w: (C', C, k, k), k odd."""
    p = w.shape[-1] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w)


# %% [markdown]
# ## Exercise 3.1: the four rotated filters
#
# Write `rotated_filters(w)` returning the stack of the four rotated copies of a filter bank
# `w: (C', C, k, k)`: shape `(4, C', C, k, k)`, entry `g` rotated by `g` quarter turns.


# %%
def rotated_filters(w: torch.Tensor) -> torch.Tensor:
    """``(4, C', C, k, k)``: ``out[g] = rot90(w, g)`` on the two spatial axes."""
    # BEGIN SOLUTION Exercise 3.1: torch.stack of torch.rot90(w, g, dims=(-2, -1)) for g in 0..3
    return torch.stack([torch.rot90(w, g, dims=(-2, -1)) for g in range(4)])
    # END SOLUTION


# %%
if __name__ == "__main__":
    w = torch.arange(9.0).view(1, 1, 3, 3)
    print(rotated_filters(w)[:, 0, 0])

# %% [markdown]
# ## Exercise 3.2: the C4 lifting convolution
#
# Write `lifting_conv(x, w)`: `x: (B, C, H, W)`, `w: (C', C, k, k)` ->
# `y: (B, C', 4, H, W)` with `y[:, :, g] = conv(x, rot90(w, g))`. Then rotating the input by `r`
# quarter turns acts on `y` by the regular representation.


# %%
def lifting_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """C4 lifting convolution ``(B, C, H, W) -> (B, C', 4, H, W)``."""
    # BEGIN SOLUTION Exercise 3.2: one conv per rotated filter, stacked on a new axis at dim 2
    return torch.stack([conv(x, torch.rot90(w, g, dims=(-2, -1))) for g in range(4)], dim=2)
    # END SOLUTION


# %%
if __name__ == "__main__":
    C4 = Rotations(4)
    x, w = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 3, 3)
    print("equivariance error:",
          equivariance_error(lambda t: lifting_conv(t, w), C4, x, out_action=C4.act_fmap))

# %% [markdown]
# ## Exercise 3.3: the C4 group convolution
#
# Write `group_conv(x, w)`: `x: (B, C, 4, H, W)`, `w: (C', C, 4, k, k)` ->
# `y: (B, C', 4, H, W)` with
# `y[:, :, g] = sum_{c, h} conv(x[:, c, h], (T_g w)[:, c, h])`, where `T_g w` rotates every
# spatial slice of `w` by `g` quarter turns *and* rolls its orientation axis (dim 2) by `g`
# (`torch.roll(..., g, dims=2)`). Hint: flatten `(C, 4)` into one channel axis of size `4C`
# for both `x` and the transformed filter, then call `conv` once per `g`.


# %%
def group_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """C4 group convolution ``(B, C, 4, H, W) -> (B, C', 4, H, W)``."""
    # BEGIN SOLUTION Exercise 3.3: wg = roll(rot90(w, g), g, dims=2); flatten (C, 4); conv; stack
    B, C, G, H, W = x.shape
    Co, k = w.shape[0], w.shape[-1]
    xf = x.reshape(B, C * G, H, W)
    outs = []
    for g in range(4):
        wg = torch.roll(torch.rot90(w, g, dims=(-2, -1)), g, dims=2)
        outs.append(conv(xf, wg.reshape(Co, C * G, k, k)))
    return torch.stack(outs, dim=2)
    # END SOLUTION


# %%
if __name__ == "__main__":
    C4 = Rotations(4)
    h, w2 = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 3, 3)
    print("equivariance error:", equivariance_error(
        lambda t: group_conv(t, w2), C4, h, in_action=C4.act_fmap, out_action=C4.act_fmap))

# %% [markdown]
# ## Exercise 3.4: invariant features
#
# Write `invariant_features(y)` that turns a C4 feature map `y: (B, C, 4, H, W)` into features
# `(B, C)` that do not change when the input image is rotated by quarter turns or cyclically
# shifted: the maximum over orientations, then the mean over all positions.


# %%
def invariant_features(y: torch.Tensor) -> torch.Tensor:
    """``(B, C, 4, H, W) -> (B, C)``: max over the orientation axis, mean over space."""
    # BEGIN SOLUTION Exercise 3.4: y.amax(dim=2) then .mean over the last two axes
    return y.amax(dim=2).mean(dim=(-2, -1))
    # END SOLUTION


# %%
if __name__ == "__main__":
    C4 = Rotations(4)
    x, w = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 3, 3)
    f = lambda t: invariant_features(torch.relu(lifting_conv(t, w)))  # noqa: E731
    print("invariance error:", equivariance_error(f, C4, x, out_action="invariant"))
