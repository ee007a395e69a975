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
# # Exercises 10: the capstone
#
# In your copy, `book/my-exercises/ex10_capstone.py`, replace each `raise NotImplementedError(...)`
# line with your code; its message is a hint that points at the part of chapter 10 you need.
# Grade all of them with `python3 course.py check 10`. The last exercise is the
# graded final one: `find_symmetry` must name the hidden symmetry of capstone data sets it has
# never seen, one of `equilib.data.capstone.SYMMETRIES`.
#
# The idea you will implement (an *orbit test*): if the data distribution is invariant to a
# transformation `g`, then a transformed test digit `g.x` looks like training digits of the same
# class, so a nearest-neighbour classifier fit on the training set classifies `g.x` about as well
# as `x`. If it is not, `g.x` lands where there is no training data and the accuracy collapses.

# %%
from collections.abc import Callable

import torch

from equilib.data.capstone import SYMMETRIES, CapstoneData

# The transformations to test, one per candidate symmetry: a quarter turn, a mirror image, and a
# (cyclic) shift by two pixels in each direction.
CANDIDATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rotation": lambda X: torch.rot90(X, 1, dims=(-2, -1)),
    "flip": lambda X: torch.flip(X, dims=(-1,)),
    "translation": lambda X: torch.roll(X, (2, -2), dims=(-2, -1)),
}

# %% [markdown]
# ## Exercise 10.1: a nearest-neighbour classifier
#
# Write `nearest_neighbour_accuracy(Xtr, ytr, Xte, yte)`: classify every test image by the label
# of the closest training image in Euclidean distance over all pixels (`torch.cdist` on
# flattened images), and return the fraction classified correctly as a float. The grader
# compares with a plain loop over the test images.


# %%
def nearest_neighbour_accuracy(
    Xtr: torch.Tensor, ytr: torch.Tensor, Xte: torch.Tensor, yte: torch.Tensor
) -> float:
    """1-NN accuracy: ``Xtr: (N, C, H, W)``, ``ytr: (N,)``, ``Xte: (M, C, H, W)``, ``yte: (M,)``."""
    # BEGIN SOLUTION Exercise 10.1: see chapter 10, section 2 (The orbit test): a classifier that only memorises gives each test image the label of the training image nearest to it; compute all distances at once
    d = torch.cdist(Xte.flatten(1), Xtr.flatten(1))
    return float((ytr[d.argmin(1)] == yte).float().mean())
    # END SOLUTION


# %%
if __name__ == "__main__":
    from equilib.data.capstone import make_capstone

    data = make_capstone(400, 200, seed=0)
    print("1-NN accuracy:", nearest_neighbour_accuracy(data.Xtr, data.ytr, data.Xte, data.yte))

# %% [markdown]
# ## Exercise 10.2: the orbit ratio
#
# Write `orbit_ratio(data, transform)`: the nearest-neighbour accuracy on the *transformed* test
# images divided by the accuracy on the test images as they are. Near 1: the data look the same
# after the transformation; far below 1: they do not.


# %%
def orbit_ratio(data: CapstoneData, transform: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``acc(transform(Xte)) / acc(Xte)`` of the 1-NN classifier fit on ``data``'s training set."""
    # BEGIN SOLUTION Exercise 10.2: see chapter 10, section 2 (The orbit test): one classifier, fit once on the training set, scored on two versions of the test set
    base = nearest_neighbour_accuracy(data.Xtr, data.ytr, data.Xte, data.yte)
    moved = nearest_neighbour_accuracy(data.Xtr, data.ytr, transform(data.Xte), data.yte)
    return moved / max(base, 1e-12)
    # END SOLUTION


# %%
if __name__ == "__main__":
    for name, t in CANDIDATES.items():
        print(f"{name:12s} orbit ratio {orbit_ratio(data, t):.2f}")

# %% [markdown]
# ## Exercise 10.3 (graded final exercise): find the symmetry
#
# Write `find_symmetry(data)` returning one of `SYMMETRIES` (`"rotation"`, `"flip"`,
# `"translation"` or `"none"`). The rule that turns evidence into an answer is yours to find:
# make data sets whose symmetry you choose (`make_capstone(..., symmetry=s)` for each `s` in
# `SYMMETRIES`, several seeds), look at what your orbit ratios (or any other evidence from the
# course) do in each case, and decide what separates them, including the case where the data have
# no symmetry at all. The grader runs your function on fresh data sets, one per symmetry, and
# also checks that the answer has the right form (a string from `SYMMETRIES`).


# %%
def find_symmetry(data: CapstoneData) -> str:
    """The symmetry of ``data``'s distribution: one of ``SYMMETRIES``."""
    # BEGIN SOLUTION Exercise 10.3: see chapter 10, section 2: what orbit ratio do you expect for a candidate the data are symmetric under, and for one they are not? Measure both on data sets you make yourself before you fix a rule
    ratios = {name: orbit_ratio(data, t) for name, t in CANDIDATES.items()}
    best = max(ratios, key=ratios.get)
    return best if ratios[best] > 0.5 else "none"
    # END SOLUTION


# %%
if __name__ == "__main__":
    print("my answer:", find_symmetry(data), "- one of", SYMMETRIES)
