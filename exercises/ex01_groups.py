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
# # Exercises 01: symmetry and groups
#
# In your copy, `book/my-exercises/ex01_groups.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 01 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 01`.
#
# Conventions (as in `equilib.groups`): images are tensors `x: (..., H, W)`; a rotation by `k`
# quarter turns is `torch.rot90(x, k, dims=(-2, -1))` (counter-clockwise); a D4 element
# `(k, flip)` means "first mirror left-right if `flip`, then turn by `k` quarter turns", and
# `compose(a, b)` means "first `b`, then `a`".

# %%
from collections.abc import Callable, Sequence

import torch

from equilib.groups import Dihedral, Rotations

# %% [markdown]
# ## Exercise 1.1: composing elements of D4
#
# Write `d4_compose(a, b)` returning the D4 element `a b` ("first `b`, then `a`") for elements
# `(k, flip)` with `k` in 0..3 and `flip` in {0, 1}, without calling `equilib.groups`. Work it
# out on paper first: write `a b` as "mirror?, turn, mirror?, turn" and move the second turn past
# the mirror before it. Check your answer by acting on an image: `d4_act(a, d4_act(b, x))` must
# equal `d4_act(d4_compose(a, b), x)` for every pair (that is what the grader checks).


# %%
def d4_compose(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The D4 element ``a b`` (first ``b``, then ``a``); elements are ``(k, flip)`` pairs."""
    # BEGIN SOLUTION Exercise 1.1: see chapter 01, section 2 (Groups): what does a mirror do to the sense of a turn that follows it?
    (k1, f1), (k2, f2) = a, b
    k = (k1 + (k2 if f1 == 0 else -k2)) % 4
    return (k, (f1 + f2) % 2)
    # END SOLUTION


def d4_act(g: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """Act with the D4 element ``g = (k, flip)`` on images ``x: (..., H, H)`` (given)."""
    k, f = g
    if f:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1))


# %%
if __name__ == "__main__":
    x = torch.arange(16.0).view(4, 4)
    for a in [(1, 0), (0, 1), (3, 1)]:
        for b in [(1, 0), (2, 1)]:
            ab = d4_compose(a, b)
            same = torch.equal(d4_act(a, d4_act(b, x)), d4_act(ab, x))
            print(f"{a} {b} = {ab}: action law holds: {same}")

# %% [markdown]
# ## Exercise 1.2: the regular action of C4 on a feature map
#
# A feature map with a group axis `f: (..., 4, H, W)` holds one image per rotation `h` of C4.
# The regular representation moves the image at `h` to position `g h` and rotates it:
# `(g.f)[(g + h) % 4] = rot90(f[h], g)`. Write it without a Python loop over `h` (and without
# `equilib.groups`): the grader checks every position of the group axis and the action law.


# %%
def c4_regular_action(g: int, f: torch.Tensor) -> torch.Tensor:
    """Act with ``g`` in C4 on a feature map ``f: (..., 4, H, H)``: ``(g.f)[g+h] = g.(f[h])``."""
    if f.ndim < 3 or f.shape[-3] != 4:
        raise ValueError(f"expected a feature map (..., 4, H, H), got {tuple(f.shape)}")
    # BEGIN SOLUTION Exercise 1.2: see chapter 01, section 3 (Actions on images and on feature maps): two things happen to the whole tensor, a move along the group axis and a turn of every image; does their order matter?
    return torch.rot90(torch.roll(f, shifts=g, dims=-3), g, dims=(-2, -1))
    # END SOLUTION


# %%
if __name__ == "__main__":
    f = torch.randn(2, 4, 5, 5)
    for g in range(4):
        ok = torch.allclose(c4_regular_action(g, f), Rotations(4).act_fmap(g, f))
        print(f"g={g}: matches equilib: {ok}")

# %% [markdown]
# ## Exercise 1.3: an equivariance test of your own
#
# Write `max_equivariance_error(f, transforms, x)`: given pairs `(t_in, t_out)` of functions on
# tensors, return the largest relative error `|f(t_in(x)) - t_out(f(x))| / |f(x)|` over the
# pairs, as a Python float (norms over the whole batch; use `|f(x)| = 1` if `f(x)` is all zero).
# An invariance test is the case where `t_out` does nothing.


# %%
Transform = Callable[[torch.Tensor], torch.Tensor]


def max_equivariance_error(
    f: Transform, transforms: Sequence[tuple[Transform, Transform]], x: torch.Tensor
) -> float:
    """``max over (t_in, t_out) of |f(t_in(x)) - t_out(f(x))| / |f(x)|``; 0 if no pairs."""
    # BEGIN SOLUTION Exercise 1.3: see chapter 01, section 4 (Invariance and equivariance of real functions): transform before f, transform after f, compare relative to the size of f(x)
    with torch.no_grad():
        fx = f(x)
        scale = fx.norm()
        if scale == 0:
            scale = torch.ones_like(scale)
        worst = 0.0
        for t_in, t_out in transforms:
            worst = max(worst, float((f(t_in(x)) - t_out(fx)).norm() / scale))
    return worst
    # END SOLUTION


# %%
if __name__ == "__main__":
    D4 = Dihedral(4)
    pairs = [(lambda z, g=g: D4.act(g, z), lambda z, g=g: D4.act(g, z)) for g in D4.elements]
    x = torch.rand(3, 1, 8, 8)
    print("sigmoid:", max_equivariance_error(torch.sigmoid, pairs, x))
    weighted = lambda z: z * torch.linspace(0, 1, 8).view(8, 1)
    print("position-dependent weighting:", max_equivariance_error(weighted, pairs, x))

# %% [markdown]
# ## Exercise 1.4: a shift-equivariant blur
#
# Write a 3x3 box blur with wrap-around borders using only `torch.roll` and additions: the
# output at `(i, j)` is the mean of the nine pixels `(i + a, j + b)` for `a, b` in
# {-1, 0, 1}, indices taken modulo the image size. Then convince yourself (the cell below, and
# the grading tests) that it commutes with every cyclic shift, and with every element of D4.


# %%
def box_blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean filter with circular borders. ``x: (..., H, W)`` -> same shape."""
    # BEGIN SOLUTION Exercise 1.4: see chapter 01, section 3: a cyclic shift of the whole image brings a neighbour's value to every pixel at once
    out = torch.zeros_like(x)
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            out = out + torch.roll(x, shifts=(a, b), dims=(-2, -1))
    return out / 9
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.rand(2, 1, 6, 7)
    shifts = [(1, 0), (0, 3), (5, 6)]
    pairs = [(lambda z, s=s: torch.roll(z, s, (-2, -1)),) * 2 for s in shifts]
    print("box blur, shifts:", max_equivariance_error(box_blur, pairs, x))

# %% [markdown]
# ## Exercise 1.5: the nearest symmetric filter
#
# Chapter 01 found the blur with a symmetric 3x3 kernel D4-equivariant and the horizontal motion
# blur not. Write `d4_symmetrize(w)` that turns any square kernel `w: (k, k)` (odd `k`) into the
# kernel closest to it (smallest sum of squared differences) whose circular convolution
# `circular_conv(x, kernel)` (given below) is equivariant to all of D4. Decide first, on paper:
# which kernels give a D4-equivariant convolution, and what is the closest point of a subspace
# that every group element maps to itself? The grader measures the equivariance of your
# kernel's convolution and checks that no other equivariant kernel is closer to `w`.


# %%
def circular_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Cross-correlate ``x: (B, 1, H, W)`` with ``kernel: (k, k)``, circular borders (given)."""
    p = kernel.shape[-1] // 2
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode="circular")
    return torch.nn.functional.conv2d(padded, kernel[None, None].to(x.dtype))


def d4_symmetrize(w: torch.Tensor) -> torch.Tensor:
    """The kernel nearest to ``w: (k, k)`` whose circular convolution is D4-equivariant."""
    # BEGIN SOLUTION Exercise 1.5: see chapter 01, section 4: equivariance of a convolution is a property of its kernel; how would you make anything unchanged by every element of a group at once?
    out = torch.zeros_like(w)
    for g in Dihedral(4).elements:
        out = out + d4_act(g, w)
    return out / 8
    # END SOLUTION


# %%
if __name__ == "__main__":
    motion = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]) / 3
    sym = d4_symmetrize(motion)
    print(sym)
    x = torch.rand(2, 1, 8, 8)
    D4 = Dihedral(4)
    pairs = [(lambda z, g=g: D4.act(g, z),) * 2 for g in D4.elements]
    print("motion blur:", max_equivariance_error(lambda z: circular_conv(z, motion), pairs, x))
    print("symmetrised:", max_equivariance_error(lambda z: circular_conv(z, sym), pairs, x))
