"""scikit-learn's bundled handwritten digits as tensors, and the image plumbing around them.

The 1797 digits of ``sklearn.datasets.load_digits`` are 8x8 grey images with 17 grey levels;
they ship inside the scikit-learn wheel, so every chapter runs offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["load_digits", "split", "upsample", "place_on_canvas", "make_loader", "load"]


def load_digits(size: int | None = None, dtype: torch.dtype = torch.float32):
    """All 1797 digits as ``(X, y)``: ``X: (1797, 1, S, S)`` in [0, 1], ``y: (1797,)`` int64.

    ``size=None`` keeps the original 8x8; any other ``size`` upsamples bilinearly (room for
    rotations without losing the corners).
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    X = torch.as_tensor(bunch.images, dtype=dtype).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    if size is not None:
        X = upsample(X, size)
    return X, y


def upsample(X: torch.Tensor, size: int) -> torch.Tensor:
    """Resize images ``X: (N, C, H, W)`` to ``(N, C, size, size)`` with bilinear interpolation.

    The values stay within the range of ``X`` (bilinear weights are convex; the clamp only
    removes rounding), whatever that range is: images in [0, 1], standardised or in 0..255."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if X.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(X.shape)}")
    if X.shape[-2:] == (size, size):
        return X.clone()
    out = F.interpolate(X, size=(size, size), mode="bilinear", align_corners=False)
    if X.numel() == 0:
        return out
    return out.clamp(X.min(), X.max())


def split(X: torch.Tensor, y: torch.Tensor, n_train: int, n_test: int, seed: int = 0):
    """A seeded random split into disjoint train and test sets: ``(Xtr, ytr, Xte, yte)``."""
    if len(X) != len(y):
        raise ValueError(f"X and y differ in length: {len(X)} vs {len(y)}")
    if n_train < 1 or n_test < 0 or n_train + n_test > len(X):
        raise ValueError(
            f"need 1 <= n_train and 0 <= n_test with n_train + n_test <= {len(X)}; "
            f"got n_train={n_train}, n_test={n_test}"
        )
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    return X[tr], y[tr], X[te], y[te]


def place_on_canvas(X: torch.Tensor, canvas: int, positions: torch.Tensor) -> torch.Tensor:
    """Paste images ``X: (N, C, h, w)`` onto empty ``canvas x canvas`` images.

    ``positions: (N, 2)`` holds the top-left corner (row, column) of each image; every image
    must fit inside the canvas. Returns ``(N, C, canvas, canvas)``.
    """
    if X.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, h, w), got {tuple(X.shape)}")
    positions = torch.as_tensor(positions, dtype=torch.int64)
    if positions.shape != (len(X), 2):
        raise ValueError(f"positions must have shape ({len(X)}, 2), got {tuple(positions.shape)}")
    N, C, h, w = X.shape
    if len(positions) and (
        positions.min() < 0
        or (positions[:, 0] + h).max() > canvas
        or (positions[:, 1] + w).max() > canvas
    ):
        raise ValueError(f"an image of size {h}x{w} does not fit on a {canvas}x{canvas} canvas")
    out = X.new_zeros(N, C, canvas, canvas)
    rows = positions[:, 0, None] + torch.arange(h)  # (N, h)
    cols = positions[:, 1, None] + torch.arange(w)  # (N, w)
    n_idx = torch.arange(N)[:, None, None]
    out.permute(0, 2, 3, 1)[n_idx, rows[:, :, None], cols[:, None, :]] = X.permute(0, 2, 3, 1)
    return out


def make_loader(
    X: torch.Tensor, y: torch.Tensor, batch_size: int = 128, shuffle: bool = True, seed: int = 0
) -> DataLoader:
    """A DataLoader over ``(X, y)`` whose shuffling order is fixed by ``seed``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        TensorDataset(X, y), batch_size=batch_size, shuffle=shuffle, generator=generator
    )


def load(name: str, **kwargs):
    """Load a data set by name: ``digits``, ``mnist`` or ``cifar10``; returns ``(X, y)``."""
    from equilib.data import files

    loaders = {"digits": load_digits, "mnist": files.load_mnist, "cifar10": files.load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; valid names are {sorted(loaders)}")
    return loaders[name](**kwargs)
