"""Digits with full, partial and mixed rotational symmetry (the degree-of-equivariance data).

Each source digit (scikit-learn's 8x8, upsampled to ``digit`` pixels and centred on a
``size x size`` canvas, so rotations keep it on the canvas) is transformed by one of:

* ``upright``: not at all;
* ``c4``: a random multiple of 90 degrees (exact, ``rot90``);
* ``c2``: a random multiple of 180 degrees (exact): the subgroup {0, 180} of C4;
* ``so2``: a random angle in [0, 2 pi) (bilinear);
* ``partial``: a random angle in [-theta, theta] (bilinear);
* ``c4-partial``: a random quarter turn within [-theta, theta] (exact; {-90, 0, 90} degrees
  for theta = 90 degrees): a partial range on the grid of C4.

Tasks (``make_degree_task``), all with 10 classes except ``double``: ``upright``, ``rotated``
(all of C4) and ``partial``: half turns only (``c2``), on the digits other than 6 and 9 (a 6
turned by 180 degrees is a 9, so with them the labels would contradict the images); 8 of the 10
labels occur. ``double``: two digits side by side on a ``size x 2 size`` canvas, the left one
rotated by C4 and the right one upright, label ``10 * left + right`` (100 classes). Train and
test images come from disjoint source digits. ``TASK_ANGLES`` lists, per single-digit task, the
rotations (degrees) its images are turned by.
"""

from __future__ import annotations

import math

import torch

from equilib.data.digits import load_digits, upsample
from equilib.groups import rotate

__all__ = [
    "DEGREE_TASKS",
    "TASK_ANGLES",
    "PARTIAL_EXCLUDED",
    "ROTATION_KINDS",
    "transform_digits",
    "make_rotated_digits",
    "make_double_digits",
    "make_degree_task",
]

DEGREE_TASKS = ("upright", "rotated", "partial", "double")
#: How ``transform_digits`` turns each digit (the ``kind``s listed in the module docstring).
ROTATION_KINDS = ("upright", "c4", "c2", "so2", "partial", "c4-partial")
TASK_ANGLES = {"upright": (0,), "rotated": (0, 90, 180, 270), "partial": (0, 180)}
PARTIAL_EXCLUDED = (6, 9)  # the digits a half turn maps onto each other


def _check_transform(kind: str) -> None:
    if kind not in ROTATION_KINDS:
        raise ValueError(f"unknown rotation kind {kind!r}; valid kinds are {list(ROTATION_KINDS)}")


def transform_digits(
    X: torch.Tensor, kind: str, theta: float = math.pi / 4, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate every square image of ``X: (N, C, S, S)`` by a random angle drawn per ``kind``.

    Returns ``(X', angles (N,))``; ``theta`` (radians, >= 0) is the half-width for ``partial``.
    """
    _check_transform(kind)
    if X.ndim != 4 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"expected square images (N, C, S, S), got {tuple(X.shape)}")
    if not theta >= 0:
        raise ValueError(f"theta must be a non-negative angle in radians, got {theta!r}")
    N = len(X)
    if kind == "upright":
        return X.clone(), torch.zeros(N)
    if kind in ("c4", "c2", "c4-partial"):
        if kind == "c4":
            k = torch.randint(4, (N,), generator=generator)
        elif kind == "c2":
            k = 2 * torch.randint(2, (N,), generator=generator)
        else:
            kmax = int(math.floor(theta / (math.pi / 2) + 1e-9))
            k = torch.randint(-kmax, kmax + 1, (N,), generator=generator) % 4
        out = X.clone()
        for q in range(1, 4):
            sel = k == q
            out[sel] = torch.rot90(X[sel], q, dims=(-2, -1))
        angles = k.float() * (math.pi / 2)
        return out, torch.where(angles > math.pi, angles - 2 * math.pi, angles)
    if kind == "so2":
        angles = torch.rand(N, generator=generator) * (2 * math.pi)
    else:
        angles = (2 * torch.rand(N, generator=generator) - 1) * theta
    out = rotate(X, angles.to(X.dtype))
    if X.numel():
        # bilinear weights are convex and the corners fill with zeros: the clamp removes
        # rounding only, within the range of X (and 0), whatever that range is
        out = out.clamp(X.min().clamp(max=0), X.max().clamp(min=0))
    return out, angles


def _sources(n_train: int, n_test: int, size: int, digit: int, seed: int, exclude=()):
    """Disjoint train/test pools of source digits centred on ``size`` canvases.

    ``exclude``: labels left out of both pools.
    """
    if not (isinstance(size, int) and isinstance(digit, int) and 1 <= digit <= size):
        raise ValueError(f"need integers 1 <= digit <= size, got digit={digit!r}, size={size!r}")
    X, y = load_digits()
    if exclude:
        keep = ~torch.isin(y, torch.tensor(list(exclude)))
        X, y = X[keep], y[keep]
    if n_train < 1 or n_test < 1 or n_train + n_test > len(X):
        without = f" (without the digits {list(exclude)})" if exclude else ""
        raise ValueError(
            f"need n_train >= 1, n_test >= 1 and n_train + n_test <= {len(X)} source "
            f"digits{without}; got n_train={n_train}, n_test={n_test}"
        )
    X = upsample(X, digit)
    pad_lo = (size - digit) // 2
    pad_hi = size - digit - pad_lo
    X = torch.nn.functional.pad(X, (pad_lo, pad_hi, pad_lo, pad_hi))
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    return X[tr], y[tr], X[te], y[te]


def make_rotated_digits(
    n_train: int,
    n_test: int,
    kind: str = "c4",
    size: int = 16,
    digit: int = 12,
    theta: float = math.pi / 4,
    seed: int = 0,
    exclude: tuple[int, ...] = (),
):
    """Single digits transformed per ``kind``: ``(Xtr (n_train, 1, size, size), ytr, Xte, yte)``.

    At most 1797 digits in all (each source digit is used once), fewer without the labels in
    ``exclude``.
    """
    _check_transform(kind)
    Xtr, ytr, Xte, yte = _sources(n_train, n_test, size, digit, seed, exclude)
    g = torch.Generator().manual_seed(seed + 1)
    Xtr, _ = transform_digits(Xtr, kind, theta, g)
    Xte, _ = transform_digits(Xte, kind, theta, g)
    return Xtr, ytr, Xte, yte


def make_double_digits(
    n_train: int,
    n_test: int,
    left: str = "c4",
    right: str = "upright",
    size: int = 16,
    digit: int = 12,
    theta: float = math.pi / 4,
    seed: int = 0,
    test_fraction: float = 0.3,
):
    """Two digits side by side, each transformed by its own kind; label ``10 * left + right``.

    Returns ``(Xtr (n_train, 1, size, 2 size), ytr (n_train,), Xte, yte)`` with labels in 0..99.
    Train pairs draw from one pool of source digits and test pairs from a disjoint pool
    (``test_fraction`` of the 1797).
    """
    _check_transform(left)
    _check_transform(right)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"need n_train >= 1 and n_test >= 1, got {n_train}, {n_test}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n_pool_test = int(round(1797 * test_fraction))
    Ptr, qtr, Pte, qte = _sources(1797 - n_pool_test, n_pool_test, size, digit, seed)
    g = torch.Generator().manual_seed(seed + 1)

    def pairs(P, q, n):
        i = torch.randint(len(P), (n,), generator=g)
        j = torch.randint(len(P), (n,), generator=g)
        a, _ = transform_digits(P[i], left, theta, g)
        b, _ = transform_digits(P[j], right, theta, g)
        return torch.cat([a, b], dim=-1), 10 * q[i] + q[j]

    Xtr, ytr = pairs(Ptr, qtr, n_train)
    Xte, yte = pairs(Pte, qte, n_test)
    return Xtr, ytr, Xte, yte


def make_degree_task(
    name: str,
    n_train: int,
    n_test: int,
    size: int = 16,
    digit: int = 12,
    seed: int = 0,
):
    """One of ``DEGREE_TASKS``: ``(Xtr, ytr, Xte, yte, n_classes)``.

    ``upright``/``rotated``: single digits, upright / turned by a random element of C4.
    ``partial``: the digits other than 6 and 9 (at most 1436), each turned by 0 or 180 degrees
    (the subgroup C2 of C4). These three have 10 classes. ``double``: left digit C4-rotated,
    right upright (100 classes).
    """
    if name not in DEGREE_TASKS:
        raise ValueError(f"unknown degree task {name!r}; valid tasks are {list(DEGREE_TASKS)}")
    if name == "double":
        return (*make_double_digits(n_train, n_test, "c4", "upright", size, digit, seed=seed), 100)
    kind = {"upright": "upright", "rotated": "c4", "partial": "c2"}[name]
    exclude = PARTIAL_EXCLUDED if name == "partial" else ()
    return (
        *make_rotated_digits(n_train, n_test, kind, size, digit, seed=seed, exclude=exclude),
        10,
    )
