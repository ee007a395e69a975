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
# In your copy, `book/my-exercises/ex03_group_convolutions.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 03 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 03`.
#
# Conventions (as in `equilib.nn` and `equilib.groups`): a quarter turn is
# `torch.rot90(t, 1, dims=(-2, -1))`; C4 feature maps have shape `(B, C, 4, H, W)` with the
# orientation axis at position 2; convolutions are circular 'same' cross-correlations (the
# helper `conv` below); the regular representation rotates every slice by `r` and rolls the
# orientation axis by `r` (`equilib.groups.Rotations(4).act_fmap`).
#
# Exercises 3.2 and 3.3 add mirror images: the dihedral group `D4 = Dihedral(4)` has the eight
# elements `g = (k, flip)` of `D4.elements`, in that order ("first mirror left-right if `flip`,
# then turn by `k` quarter turns", as in exercise 1.1), acting on images by `D4.act(g, x)`.
# A D4 feature map has shape `(B, C, 8, H, W)`: slice `i` of its group axis belongs to the element
# `D4.elements[i]`, and the regular representation is `D4.act_fmap(g, y)`.

# %%
import torch
import torch.nn.functional as F

from equilib.groups import Dihedral, Rotations, equivariance_error

D4 = Dihedral(4)


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
    # BEGIN SOLUTION Exercise 3.1: see chapter 03, 'Rotating the filter is rotating the image': the turn acts on the two spatial axes of every filter at once
    return torch.stack([torch.rot90(w, g, dims=(-2, -1)) for g in range(4)])
    # END SOLUTION


# %%
if __name__ == "__main__":
    w = torch.arange(9.0).view(1, 1, 3, 3)
    print(rotated_filters(w)[:, 0, 0])

# %% [markdown]
# ## Exercise 3.2: a lifting convolution for D4
#
# Chapter 03 lifts an image with the four rotated copies of a filter. Do it for D4, whose
# elements also mirror. Write `d4_lifting_conv(x, w)`: `x: (B, C, H, W)`, `w: (C', C, k, k)` ->
# `y: (B, C', 8, H, W)`, where slice `i` of the group axis is the convolution of `x` with the
# filter transformed by the element `D4.elements[i]`. Check first, on paper or in code, that the
# identity of chapter 03 (transforming the image and the filter together transforms the output)
# holds for a mirror too. Then transforming the input by any `g` of D4 acts on `y` by the regular
# representation: the grader checks that for all eight elements, and compares your layer with
# the same layer computed another way.


# %%
def d4_lifting_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """D4 lifting convolution ``(B, C, H, W) -> (B, C', 8, H, W)``."""
    # BEGIN SOLUTION Exercise 3.2: see chapter 03, 'Rotating the filter is rotating the image' and 'The lifting convolution': one output slice per element of the group, each from a transformed copy of the filter, in the order of D4.elements
    return torch.stack([conv(x, D4.act(g, w)) for g in D4.elements], dim=2)
    # END SOLUTION


# %%
if __name__ == "__main__":
    x, w = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 3, 3)
    print(
        "D4 equivariance error:",
        equivariance_error(lambda t: d4_lifting_conv(t, w), D4, x, out_action=D4.act_fmap),
    )

# %% [markdown]
# ## Exercise 3.3: a group convolution for D4
#
# After the D4 lifting, a filter lives on the group too: `w: (C', C, 8, k, k)`, one small image
# per input channel and input element. Write `d4_group_conv(x, w)`: `x: (B, C, 8, H, W)` ->
# `y: (B, C', 8, H, W)`. As in chapter 03, slice `g` of the output sums, over the input channels
# `c` and the input elements `h`, the convolution of `x[:, c, h]` with the filter transformed by
# `g`; transforming a filter on the group by `g` transforms each of its small images by `g` *and*
# moves them along the group axis: `(T_g w)_{c, h} = g . w_{c, g^-1 h}`. For C4 that move was a
# roll; for D4 work it out from the group's composition (`D4.compose`, `D4.inverse`,
# `D4.index`). The grader checks that the layer commutes with the regular representation of D4
# and compares it with a computation of its own.


# %%
def d4_group_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """D4 group convolution ``(B, C, 8, H, W) -> (B, C', 8, H, W)``."""
    # BEGIN SOLUTION Exercise 3.3: see chapter 03, 'The group convolution': after the move by g, which small image of w sits at h? Chapter 01, section 3 (Actions on images and on feature maps) moves the slices of a feature map the same way
    B, C, G, H, W = x.shape
    Co, k = w.shape[0], w.shape[-1]
    xf = x.reshape(B, C * G, H, W)
    outs = []
    for g in D4.elements:
        wg = D4.act_fmap(g, w)  # every small image transformed by g and moved from h to g h
        outs.append(conv(xf, wg.reshape(Co, C * G, k, k)))
    return torch.stack(outs, dim=2)
    # END SOLUTION


# %%
if __name__ == "__main__":
    h, w2 = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 8, 3, 3)
    print(
        "D4 equivariance error:",
        equivariance_error(
            lambda t: d4_group_conv(t, w2), D4, h, in_action=D4.act_fmap, out_action=D4.act_fmap
        ),
    )

# %% [markdown]
# ## Exercise 3.4: invariant features
#
# Write `invariant_features(y)` that turns a C4 feature map `y: (B, C, 4, H, W)` into features
# `(B, C)` that do not change when the input image is rotated by quarter turns or cyclically
# shifted: the maximum over orientations, then the mean over all positions.


# %%
def invariant_features(y: torch.Tensor) -> torch.Tensor:
    """``(B, C, 4, H, W) -> (B, C)``: max over the orientation axis, mean over space."""
    # BEGIN SOLUTION Exercise 3.4: see chapter 03, 'The group convolution' (pooling over the group axis) and chapter 02, 'Pooling to invariance': which axes does a rotation or a shift only permute?
    return y.amax(dim=2).mean(dim=(-2, -1))
    # END SOLUTION


# %%
if __name__ == "__main__":
    C4 = Rotations(4)
    x, w = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 3, 3)
    lift = lambda t: torch.stack([conv(t, wg) for wg in rotated_filters(w)], dim=2)  # noqa: E731
    f = lambda t: invariant_features(torch.relu(lift(t)))  # noqa: E731
    print("invariance error:", equivariance_error(f, C4, x, out_action="invariant"))

# %% [markdown]
# ## Exercise 3.5: what a rotation-equivariant plain convolution costs
#
# Chapter 03 notes that a plain convolution is rotation equivariant only for filters that a
# quarter turn leaves unchanged. How many such filters are there? Write
# `rotation_invariant_basis(k)` returning an orthonormal basis of the `k x k` filters `w` (odd `k`)
# with `rot90(w) == w`: a tensor `(n, k, k)` whose `n` filters are each unchanged by a quarter
# turn, orthonormal as vectors of `k*k` numbers, and span all such filters. Find `n` on paper
# first (for `k = 3` and `k = 5`), then compare it with the `k*k` numbers a lifting convolution
# learns per filter. The grader counts the dimension by linear algebra of its own.


# %%
def rotation_invariant_basis(k: int) -> torch.Tensor:
    """``(n, k, k)``: an orthonormal basis of the ``k x k`` filters unchanged by a quarter turn."""
    # BEGIN SOLUTION Exercise 3.5: see chapter 03, 'Rotating the filter is rotating the image': follow one filter tap through four quarter turns; which taps must then hold the same value?
    seen = torch.zeros(k, k, dtype=torch.bool)
    basis = []
    for i in range(k):
        for j in range(k):
            if seen[i, j]:
                continue
            tap = torch.zeros(k, k, dtype=torch.float64)
            tap[i, j] = 1.0
            orbit = sum(torch.rot90(tap, g) for g in range(4)) > 0
            seen |= orbit
            basis.append(orbit.double() / orbit.sum().sqrt())
    return torch.stack(basis)
    # END SOLUTION


# %%
if __name__ == "__main__":
    for k in (3, 5, 7):
        n = len(rotation_invariant_basis(k))
        print(f"k={k}: {n} free numbers per rotation-invariant filter, {k * k} per lifting filter")
