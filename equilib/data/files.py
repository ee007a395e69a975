"""Loaders for data sets the reader keeps on disk: MNIST (IDX files) and CIFAR-10 (pickles).

Nothing is ever downloaded. The folder comes from the ``root`` argument, else from the
environment variable ``EQUILIB_DATA``; a missing folder or file raises an error that says what
to put where.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_idx", "load_mnist", "load_cifar10", "data_root"]

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_root(root: str | os.PathLike | None, name: str, expected: str) -> Path:
    """Resolve the folder holding data set ``name``; explain what is expected if it is missing."""
    if root is None:
        env = os.environ.get("EQUILIB_DATA")
        if not env:
            raise FileNotFoundError(
                f"no folder given for {name}: pass root=... or set EQUILIB_DATA to a folder "
                f"containing {expected}. equilib never downloads data."
            )
        root = Path(env) / name
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(
            f"the {name} folder {str(path)!r} does not exist; create it and put {expected} in it "
            "(equilib never downloads data)"
        )
    return path


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped): the format MNIST ships in."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: header promises {expected} bytes of data, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"missing {stem} (or {stem}.gz) in {folder}")


def load_mnist(root: str | os.PathLike | None = None, split: str = "train"):
    """MNIST from local IDX files: ``X: (N, 1, 28, 28)`` float32 in [0, 1], ``y: (N,)`` int64.

    ``root`` (or ``$EQUILIB_DATA/mnist``) must hold ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
    (each may be gzipped).
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    folder = data_root(root, "mnist", "the four MNIST IDX files (e.g. train-images-idx3-ubyte)")
    img_name, lab_name = MNIST_FILES[split]
    images = read_idx(_find(folder, img_name))
    labels = read_idx(_find(folder, lab_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST {split}: expected images (N, H, W) and labels (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    X = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return X, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train"):
    """CIFAR-10 from the python pickle batches: ``X: (N, 3, 32, 32)`` in [0, 1], ``y: (N,)``.

    ``root`` (or ``$EQUILIB_DATA/cifar10``) is the ``cifar-10-batches-py`` folder holding
    ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``.
    """
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    folder = data_root(root, "cifar10", "the cifar-10-batches-py files (data_batch_1..5, test_batch)")
    xs, ys = [], []
    for name in names[split]:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"missing CIFAR-10 batch {name} in {folder}")
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise ValueError(f"{path} is not a CIFAR-10 batch (no data/labels entries)")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    X = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    return X, torch.from_numpy(np.concatenate(ys))
