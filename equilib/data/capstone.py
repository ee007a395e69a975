"""The capstone data set of chapter 10: digits with a symmetry that is not told.

``make_capstone(seed)`` draws one of ``SYMMETRIES`` from the seed (or takes ``symmetry=``) and
builds a labelled data set whose distribution is invariant to exactly that group:

* ``"rotation"``: centred digits turned by a random quarter turn (C4);
* ``"flip"``: centred digits mirrored left-right with probability 1/2;
* ``"translation"``: upright digits at a random position on the canvas;
* ``"none"``: centred, upright digits.

The label is always the digit; the digit 9 is left out, because a half turn makes a 6 look like
a 9 and the rotation variant would have contradictory labels. The choice is kept out of the
object's printed form; ``reveal(data)`` returns it, ``grade(data, answer)`` checks an answer
given as one of the names in ``SYMMETRIES``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from equilib.data.digits import load_digits, place_on_canvas

__all__ = ["SYMMETRIES", "CapstoneData", "make_capstone", "check_answer", "grade", "reveal"]

SYMMETRIES = ("rotation", "flip", "translation", "none")
N_CLASSES = 9  # digits 0..8


@dataclass
class CapstoneData:
    """Train and test images ``(N, 1, S, S)`` in [0, 1] and labels ``(N,)`` (digits 0..8)."""

    Xtr: torch.Tensor
    ytr: torch.Tensor
    Xte: torch.Tensor
    yte: torch.Tensor
    seed: int
    n_classes: int = N_CLASSES
    _symmetry: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return (
            f"CapstoneData(train={tuple(self.Xtr.shape)}, test={tuple(self.Xte.shape)}, "
            f"n_classes={self.n_classes}, seed={self.seed}, symmetry=<hidden>)"
        )


def _hidden_choice(seed: int) -> str:
    digest = hashlib.sha256(f"equilib-capstone-{seed}".encode()).digest()
    return SYMMETRIES[digest[0] % len(SYMMETRIES)]


def _transform(X: torch.Tensor, symmetry: str, canvas: int, g: torch.Generator) -> torch.Tensor:
    N, _, s, _ = X.shape
    if symmetry == "translation":
        pos = torch.randint(0, canvas - s + 1, (N, 2), generator=g)
        return place_on_canvas(X, canvas, pos)
    centre = torch.full((N, 2), (canvas - s) // 2, dtype=torch.int64)
    X = place_on_canvas(X, canvas, centre)
    if symmetry == "rotation":
        k = torch.randint(0, 4, (N,), generator=g)
        X = torch.stack([torch.rot90(x, int(q), dims=(-2, -1)) for x, q in zip(X, k)])
    elif symmetry == "flip":
        flip = torch.rand(N, generator=g) < 0.5
        X = torch.where(flip[:, None, None, None], torch.flip(X, dims=(-1,)), X)
    return X


def make_capstone(
    n_train: int = 800,
    n_test: int = 400,
    seed: int = 0,
    symmetry: str | None = None,
    canvas: int = 16,
    digit_size: int = 10,
) -> CapstoneData:
    """Build the capstone data set; the symmetry is drawn from ``seed`` unless given.

    ``n_train + n_test`` digits (at most the 1617 digits 0..8 of scikit-learn's set), each
    upsampled to ``digit_size`` and placed on a ``canvas x canvas`` image as the symmetry says.
    """
    if symmetry is None:
        symmetry = _hidden_choice(seed)
    elif symmetry not in SYMMETRIES:
        raise ValueError(f"unknown symmetry {symmetry!r}; expected one of {list(SYMMETRIES)}")
    if not (isinstance(canvas, int) and isinstance(digit_size, int) and 4 <= digit_size <= canvas):
        raise ValueError(f"need integers 4 <= digit_size <= canvas; got {digit_size}, {canvas}")
    if symmetry == "translation" and canvas - digit_size < 4:
        raise ValueError("translation needs room: canvas - digit_size must be at least 4")
    X, y = load_digits(size=digit_size)
    keep = y < N_CLASSES
    X, y = X[keep], y[keep]
    if n_train < 1 or n_test < 1 or n_train + n_test > len(X):
        raise ValueError(
            f"need n_train, n_test >= 1 with n_train + n_test <= {len(X)}; got {n_train}, {n_test}"
        )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    X, y = X[perm[: n_train + n_test]], y[perm[: n_train + n_test]]
    X = _transform(X, symmetry, canvas, g)
    return CapstoneData(
        X[:n_train], y[:n_train], X[n_train:], y[n_train:], seed, N_CLASSES, symmetry
    )


def check_answer(answer) -> str:
    """The answer in canonical form: one of ``SYMMETRIES`` (case and surrounding spaces ignored).

    Raises ``TypeError`` for a non-string and ``ValueError`` for an unknown name.
    """
    if not isinstance(answer, str):
        raise TypeError(
            f"the answer must be a string, one of {list(SYMMETRIES)}; "
            f"got {type(answer).__name__} {answer!r}"
        )
    name = answer.strip().lower()
    if name not in SYMMETRIES:
        raise ValueError(f"unknown answer {answer!r}; answer with one of {list(SYMMETRIES)}")
    return name


def grade(data: CapstoneData, answer) -> bool:
    """Whether ``answer`` names the hidden symmetry of ``data`` (after ``check_answer``)."""
    if not isinstance(data, CapstoneData):
        raise TypeError(
            f"data must be a CapstoneData from make_capstone, got {type(data).__name__}"
        )
    return check_answer(answer) == data._symmetry


def reveal(data: CapstoneData) -> str:
    """The hidden symmetry of ``data``."""
    if not isinstance(data, CapstoneData):
        raise TypeError(
            f"data must be a CapstoneData from make_capstone, got {type(data).__name__}"
        )
    return data._symmetry
