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
# # Exercises 09: measuring equivariance
#
# In your copy, `book/my-exercises/ex09_measuring.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 09 you need.
# Each exercise ends in a cell that tries your function when you run this file as a notebook;
# grade all of them with `python3 course.py check 09`.
#
# Conventions (as in `equilib.measure`): images are `x: (B, C, H, W)`;
# `equilib.groups.rotate(x, t, mode="cubic")` turns them counter-clockwise by `t` radians (smooth
# cubic resampling, differentiable in `t`: the rotation `equilib.measure` uses);
# `equilib.measure.translate(x, dy, dx)` shifts them down and right, cyclically, by any real
# number of pixels.

# %%
from collections.abc import Callable

import torch

from equilib.groups import rotate
from equilib.measure import translate

# %% [markdown]
# ## Exercise 9.1: a Lie derivative by finite differences
#
# Write `rotation_lie_derivative_fd(f, x, eps)`: the Lie derivative of an invariant output (class
# scores) along rotations, `d/dt f(rotate(x, t, mode="cubic"))` at `t = 0`, by a finite
# difference with step `eps` that treats both sides of `t = 0` alike (at the same step it is far
# more accurate than a one-sided difference: why?). The grader compares it with forward-mode AD at
# two steps.


# %%
def rotation_lie_derivative_fd(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-3
) -> torch.Tensor:
    """Central-difference rotation Lie derivative of ``f`` at ``x: (B, C, H, H)`` -> ``f(x).shape``."""
    # BEGIN SOLUTION Exercise 9.1: see chapter 09, section 1 (The Lie derivative): which finite difference cancels the even terms of the Taylor series in t?
    with torch.no_grad():
        return (f(rotate(x, eps, mode="cubic")) - f(rotate(x, -eps, mode="cubic"))) / (2 * eps)
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.rand(2, 1, 12, 12)
    print(rotation_lie_derivative_fd(lambda z: z.mean(dim=(1, 2, 3))[:, None], x))

# %% [markdown]
# ## Exercise 9.2: the generator of a sub-pixel shift
#
# `translate(x, 0, t)` moves an image right by `t` pixels. Its derivative at `t = 0` is a
# fixed linear map of `x`, the *generator* of horizontal translations, and for `equilib`'s cubic
# resampling it is a small stencil along each row. Find that stencil by experiment: take an image
# that is zero except for one bright pixel, differentiate its translation with respect to `t` at
# `t = 0` (exactly, with forward-mode AD as in chapter 09), and see which pixels of the result
# are not zero and what they hold. Then write `shift_generator(x)` that applies the stencil to
# any image with `torch.roll` only (no `translate`, no autograd). Why does every circular
# convolution commute with it? (The grader checks that too.)


# %%
def shift_generator(x: torch.Tensor) -> torch.Tensor:
    """``d/dt translate(x, 0, t)`` at ``t = 0``, with ``torch.roll`` only."""
    # BEGIN SOLUTION Exercise 9.2: see chapter 09, section 1 (The Lie derivative) to differentiate a transformation, and section 5 (Aliasing): the generator is itself a circular convolution along each row, whose taps are what the one-pixel image shows
    return (torch.roll(x, 1, dims=-1) - torch.roll(x, -1, dims=-1)) / 2
    # END SOLUTION


# %%
if __name__ == "__main__":
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    h = 1e-6
    d = (translate(x, 0.0, h) - translate(x, 0.0, -h)) / (2 * h)  # central difference in t
    print("largest gap to a finite difference:", float((d - shift_generator(x)).abs().max()))

# %% [markdown]
# ## Exercise 9.3: Augerino's reparameterised sample
#
# Given a width `w` (a scalar tensor, radians) and noise `eps: (B,)` drawn from U(-1/2, 1/2),
# Augerino turns image `b` by `theta_b = w * eps_b`. Write `augerino_rotate(x, width, eps)` so
# that the gradient with respect to `width` flows: the grader compares it with a finite
# difference in the width.


# %%
def augerino_rotate(x: torch.Tensor, width: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Turn image ``b`` of ``x: (B, C, H, H)`` by ``width * eps[b]`` radians; differentiable in width."""
    # BEGIN SOLUTION Exercise 9.3: see chapter 09, section 4 (Augerino): the randomness sits in eps, so each angle is a differentiable function of the width; keep everything a tensor
    return rotate(x, width * eps, mode="cubic")
    # END SOLUTION


# %%
if __name__ == "__main__":
    w = torch.tensor(1.0, requires_grad=True)
    out = augerino_rotate(torch.rand(3, 1, 12, 12), w, torch.rand(3) - 0.5)
    out.sum().backward()
    print("d sum / d width =", float(w.grad))

# %% [markdown]
# ## Exercise 9.4: exact invariance by averaging over C4
#
# Any network becomes exactly invariant to quarter turns if we average its logits over the
# orbit of the input under C4. Write `c4_average(f, x)` and check it: its discrete C4 error is
# 0 for every network `f`. Its rotation Lie derivative in general is not (the grader checks
# both). Why?


# %%
def c4_average(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean of ``f`` over the four quarter turns of ``x: (B, C, H, H)``."""
    # BEGIN SOLUTION Exercise 9.4: see chapter 01, section 1 (the orbit of a digit under a group) and chapter 09, section 3 (Discrete and continuous): turning the input only reorders the orbit
    return sum(f(torch.rot90(x, k, dims=(-2, -1))) for k in range(4)) / 4
    # END SOLUTION


# %%
if __name__ == "__main__":
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3))
    x = torch.rand(2, 1, 12, 12)
    y = c4_average(net, x)
    print("C4 error:", float((c4_average(net, torch.rot90(x, 1, dims=(-2, -1))) - y).abs().max()))
