"""The toy tasks of layer-wise symmetry discovery: a digit in one of four quadrants of a canvas.

van der Ouderaa et al. (2023, section 6.1) place each digit in one quadrant of a larger canvas:

* ``digits``: the label is the digit (0-9); where it sits is irrelevant, so translation
  equivariance (convolution) helps.
* ``quadrant``: the label is ``digit + 10 * quadrant`` (40 classes); where it sits matters, so a
  strictly translation-invariant network cannot solve it.

Quadrants are numbered row-major: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right. The
digit is centred inside its quadrant. Train and test digits are disjoint source images; every
test digit is shown in all four quadrants (a lower-variance estimate of the same accuracy).
Source images are scikit-learn's 8x8 digits (bundled) or MNIST from local IDX files.
"""

from __future__ import annotations

import torch

from equilib._checks import is_int
from equilib.data.digits import load_digits, place_on_canvas, upsample

__all__ = ["TASKS", "SOURCES", "n_classes", "quadrant_corners", "place_in_quadrants", "make_task"]

TASKS = ("digits", "quadrant")
SOURCES = ("sklearn", "mnist")
N_QUADRANTS = 4


def n_classes(task: str) -> int:
    """Number of classes of a task: 10 for ``digits``, 40 for ``quadrant``."""
    _check_task(task)
    return 10 if task == "digits" else 10 * N_QUADRANTS


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are {list(TASKS)}")


def quadrant_corners(canvas: int, size: int) -> torch.Tensor:
    """Top-left corners ``(4, 2)`` (row, column) that centre a ``size`` image in each quadrant."""
    half = canvas // 2
    if canvas % 2 or size > half or size < 1:
        raise ValueError(
            f"need an even canvas at least twice the digit size; got canvas={canvas}, size={size}"
        )
    off = (half - size) // 2
    return torch.tensor(
        [[off, off], [off, half + off], [half + off, off], [half + off, half + off]]
    )


def place_in_quadrants(X: torch.Tensor, quadrants: torch.Tensor, canvas: int) -> torch.Tensor:
    """Put each digit ``X: (N, C, s, s)`` in quadrant ``quadrants: (N,)`` of a blank canvas.

    Returns ``(N, C, canvas, canvas)``.
    """
    quadrants = torch.as_tensor(quadrants, dtype=torch.int64)
    if quadrants.shape != (len(X),) or (len(X) and (quadrants.min() < 0 or quadrants.max() > 3)):
        raise ValueError(
            f"quadrants must be {len(X)} integers in 0..3, got {tuple(quadrants.shape)}"
        )
    corners = quadrant_corners(canvas, X.shape[-1])
    return place_on_canvas(X, canvas, corners[quadrants])


def _labels(task: str, digits: torch.Tensor, quadrants: torch.Tensor) -> torch.Tensor:
    return digits if task == "digits" else digits + 10 * quadrants


def _source(source: str, root, seed: int, n_train: int, n_test: int, digit_size: int | None):
    """Disjoint train and test source digits ``(Xtr, ytr, Xte, yte)``, resized to ``digit_size``."""
    g = torch.Generator().manual_seed(seed)
    if source == "sklearn":
        X, y = load_digits()
        if n_train < 1 or n_test < 1 or n_train + n_test > len(X):
            raise ValueError(
                f"scikit-learn has {len(X)} digits: need n_train >= 1, n_test >= 1 and "
                f"n_train + n_test <= {len(X)}; got n_train={n_train}, n_test={n_test}"
            )
        perm = torch.randperm(len(X), generator=g)
        tr, te = perm[:n_train], perm[n_train : n_train + n_test]
        Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    elif source == "mnist":
        from equilib.data.files import load_mnist

        Xa, ya = load_mnist(root, "train")
        Xb, yb = load_mnist(root, "test")
        if not (1 <= n_train <= len(Xa) and 1 <= n_test <= len(Xb)):
            raise ValueError(
                f"MNIST has {len(Xa)} train and {len(Xb)} test images; got n_train={n_train}, "
                f"n_test={n_test}"
            )
        tr = torch.randperm(len(Xa), generator=g)[:n_train]
        te = torch.randperm(len(Xb), generator=g)[:n_test]
        Xtr, ytr, Xte, yte = Xa[tr], ya[tr], Xb[te], yb[te]
    else:
        raise ValueError(f"unknown source {source!r}; valid sources are {list(SOURCES)}")
    if digit_size is not None and digit_size != Xtr.shape[-1]:
        Xtr, Xte = upsample(Xtr, digit_size), upsample(Xte, digit_size)
    return Xtr, ytr, Xte, yte, g


def make_task(
    task: str,
    n_train: int = 1200,
    n_test: int = 500,
    seed: int = 0,
    *,
    canvas: int | None = None,
    digit_size: int | None = None,
    source: str = "sklearn",
    root=None,
    test_all_quadrants: bool = True,
):
    """Build the ``digits`` or ``quadrant`` task: ``(Xtr, ytr, Xte, yte)``.

    ``Xtr: (n_train, 1, canvas, canvas)`` in [0, 1], each training digit in one uniformly drawn
    quadrant; ``Xte: (4 * n_test, 1, canvas, canvas)`` with every test digit in every quadrant
    (``(n_test, ...)`` in a random quadrant if ``test_all_quadrants=False``); labels int64, the
    digit for ``digits`` and ``digit + 10 * quadrant`` for ``quadrant``. ``n_train`` and
    ``n_test`` count source digits, drawn without overlap (seeded by ``seed``). Defaults: 8x8
    scikit-learn digits on a 16x16 canvas; ``source="mnist"`` reads local IDX files from ``root``
    (or ``$EQUILIB_DATA/mnist``), 28x28 digits on a 56x56 canvas unless ``digit_size`` is given.
    """
    _check_task(task)
    for name, v in (("n_train", n_train), ("n_test", n_test), ("seed", seed)):
        if not is_int(v):
            raise TypeError(f"{name} must be an int, got {v!r}")
    Xtr, dtr, Xte, dte, g = _source(source, root, seed, n_train, n_test, digit_size)
    size = Xtr.shape[-1]
    canvas = 2 * size if canvas is None else canvas
    qtr = torch.randint(0, N_QUADRANTS, (len(Xtr),), generator=g)
    if test_all_quadrants:
        qte = torch.arange(N_QUADRANTS).repeat_interleave(len(Xte))
        Xte, dte = Xte.repeat(N_QUADRANTS, 1, 1, 1), dte.repeat(N_QUADRANTS)
    else:
        qte = torch.randint(0, N_QUADRANTS, (len(Xte),), generator=g)
    return (
        place_in_quadrants(Xtr, qtr, canvas),
        _labels(task, dtr, qtr),
        place_in_quadrants(Xte, qte, canvas),
        _labels(task, dte, qte),
    )
